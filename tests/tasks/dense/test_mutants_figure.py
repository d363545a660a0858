"""The dense task's figure (chada.tasks.dense.figure): the colour rules by hand, and the panels, titles
and file of the figure read back from the matplotlib figure before it is saved."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import chada.tasks.dense.figure as FG


def test_composite() -> None:
    one = np.array([[[0.2, 1.5], [-1.0, np.nan]]])
    np.testing.assert_allclose(
        FG.composite(one), np.repeat(np.array([[0.2, 1.0], [0.0, 0.0]])[..., None], 3, -1)
    )
    two = np.zeros((2, 1, 2))
    two[0, 0, 0] = 0.5  # magenta (1, 0, 1)
    two[1, 0, 1] = 0.25  # green (0, 1, 0)
    np.testing.assert_allclose(FG.composite(two), [[[0.5, 0, 0.5], [0, 0.25, 0]]])
    seven = np.zeros((7, 1, 1))
    seven[6] = 0.5  # the 7th channel takes the 1st colour again
    seven[2] = 0.8  # cyan (0, 1, 1)
    np.testing.assert_allclose(FG.composite(seven), [[[0.5, 0.8, 1.0]]])  # clipped at 1


def test_error_map() -> None:
    pred = np.array([[True, True, False, False, True]])
    labels = np.array([[1, 0, 1, 0, 255]])
    np.testing.assert_allclose(FG.error_map(pred, labels)[0], [(1, 1, 1), (0.95, 0.2, 0.2), (0.2, 0.45, 1.0),
                                                               (0, 0, 0), (0.45, 0.45, 0.45)], rtol=1e-6)  # fmt: skip
    assert FG.error_map(pred, labels).dtype == np.float32


def _example(image_id: str, models: list[str]) -> SimpleNamespace:
    labels = np.array([[1, 0], [255, 0]], np.uint8)
    return SimpleNamespace(image_id=image_id, image=np.full((2, 2, 2), 0.5), labels=labels,
                           predictions={m: np.array([[True, True], [False, False]]) for m in models})  # fmt: skip


def test_figure_panels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = []

    def save(fig, path, dpi, formats):
        saved.append((fig, path, dpi, formats))
        return [path]

    monkeypatch.setattr(FG, "save_figure", save)
    outcome = SimpleNamespace(task="nuc lei", channel_names=["DNA", "RNA"], info={"mask": "nucleus"},
                              examples=[_example("im0", ["vit", "otsu"]), _example("im1", ["vit", "otsu"])])  # fmt: skip
    path = FG.plot_dense_examples(outcome, tmp_path, {"vit": 0.8123})
    assert path == tmp_path / "dense_nuc_lei.png"
    [(fig, where, dpi, formats)] = saved
    assert (where, dpi, formats) == (path, 130, ("png",))
    axes = fig.axes
    assert len(axes) == 8 and tuple(fig.get_size_inches()) == pytest.approx((1.9 * 4, 1.9 * 2 + 0.6))
    assert [a.get_title() for a in axes[:4]] == ["image: DNA, RNA", "truth: nucleus", "vit\nIoU 0.81", "otsu"]
    assert [a.get_title() for a in axes[4:]] == ["", "", "", ""]
    assert axes[0].get_ylabel() == "im0" and axes[4].get_ylabel() == "im1" and axes[1].get_ylabel() == ""
    assert fig._suptitle.get_text() == ("Dense task nuc lei: test regions; white = hit, red = false positive, "
                                        "blue = missed, grey = ignored")  # fmt: skip
    assert all(list(a.get_xticks()) == [] and list(a.get_yticks()) == [] for a in axes)
    truth = axes[1].images[0]
    np.testing.assert_allclose(truth.get_array(), [[1.0, 0.0], [0.45, 0.0]], rtol=1e-6)
    # matplotlib masks NaN, and assert_allclose skips masked cells: every cell must hold a value
    np.testing.assert_allclose(np.ma.filled(truth.get_array(), -1.0), [[1.0, 0.0], [0.45, 0.0]], rtol=1e-6)
    assert truth.get_cmap().name == "gray" and truth.get_clim() == (0, 1)
    np.testing.assert_allclose(axes[2].images[0].get_array(), FG.error_map(
        np.array([[True, True], [False, False]]), np.array([[1, 0], [255, 0]])))  # fmt: skip
    np.testing.assert_allclose(axes[0].images[0].get_array(), FG.composite(np.full((2, 2, 2), 0.5)))
    assert axes[0].title.get_fontsize() == 7
    saved.clear()
    FG.plot_dense_examples(SimpleNamespace(**{**vars(outcome), "examples": outcome.examples[:1]}), tmp_path)
    assert [a.get_title() for a in saved[0][0].axes] == ["image: DNA, RNA", "truth: nucleus", "vit", "otsu"]


def test_no_examples_no_figure(tmp_path: Path) -> None:
    outcome = SimpleNamespace(task="t", channel_names=[], info={}, examples=[])
    assert FG.plot_dense_examples(outcome, tmp_path) is None
    assert not list(tmp_path.iterdir())


def test_the_file_is_written(tmp_path: Path) -> None:
    outcome = SimpleNamespace(
        task="t/1", channel_names=["DNA"], info={"mask": "m"}, examples=[_example("a", ["m1"])]
    )
    path = FG.plot_dense_examples(outcome, tmp_path)
    assert path == tmp_path / "dense_t_1.png" and path.read_bytes()[:4] == b"\x89PNG"


def _drawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, examples: list[SimpleNamespace]):
    """The matplotlib figure ``plot_dense_examples`` hands to ``save_figure`` (not rendered)."""
    saved = []
    monkeypatch.setattr(FG, "save_figure", lambda fig, path, dpi, formats: saved.append(fig) or [path])
    outcome = SimpleNamespace(
        task="t", channel_names=["DNA", "RNA"], info={"mask": "nucleus"}, examples=examples
    )
    FG.plot_dense_examples(outcome, tmp_path, {"vit": 0.5})
    return saved[0]


def test_every_panel_spans_0_to_1_whatever_its_region_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A region wholly nucleus (truth 1 and ignored 0.45) and one with no nucleus (0 and 0.45): grey
    keeps one meaning on every row (black = background, white = nucleus) only when the colour range is
    fixed at [0, 1]; matplotlib's autoscale would stretch 0.45..1 or 0..0.45 to black..white."""
    full, empty = _example("full", ["vit"]), _example("empty", ["vit"])
    full.labels = np.array([[1, 1], [255, 1]], np.uint8)
    empty.labels = np.array([[0, 0], [255, 0]], np.uint8)
    fig = _drawn(monkeypatch, tmp_path, [full, empty])
    truths = [fig.axes[1].images[0], fig.axes[4].images[0]]
    np.testing.assert_allclose(np.ma.filled(truths[0].get_array(), -1.0), [[1, 1], [0.45, 1]], rtol=1e-6)
    np.testing.assert_allclose(np.ma.filled(truths[1].get_array(), -1.0), [[0, 0], [0.45, 0]], rtol=1e-6)
    assert [t.get_clim() for t in truths] == [(0, 1), (0, 1)]
    # pixels stay square blocks: one label per image pixel, never smoothed into its neighbours
    assert [a.images[0].get_interpolation() for a in fig.axes] == ["nearest"] * 6


def test_the_small_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Titles 7 pt, the image ids on the left 6 pt, the legend line on top 8 pt (the sizes the
    figure is laid out for: 1.9 inches a panel)."""
    fig = _drawn(monkeypatch, tmp_path, [_example("im0", ["vit"]), _example("im1", ["vit"])])
    assert [a.title.get_fontsize() for a in fig.axes[:3]] == [7, 7, 7]
    assert [fig.axes[i].yaxis.label.get_fontsize() for i in (0, 3)] == [6, 6]
    assert [fig.axes[i].get_ylabel() for i in (0, 3)] == ["im0", "im1"]
    assert fig._suptitle.get_fontsize() == 8
