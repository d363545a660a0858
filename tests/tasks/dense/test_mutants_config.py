"""The ``dense:`` section (chada.tasks.dense.config): every default, every key read, every bound and message."""

from __future__ import annotations

from pathlib import Path

import pytest

from chada.tasks.dense.config import parse_dense_tasks

BASE = {"name": "a", "source": "dsb2018", "models": {"h": "handmade"}}


def _one(**entry) -> object:
    (task,) = parse_dense_tasks([dict(BASE, **entry)], "/base")
    return task


def _refused(message: str, raw=None, **entry) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        parse_dense_tasks(raw if raw is not None else [dict(BASE, **entry)], "/base")
    assert str(info.value) == message


def test_defaults() -> None:
    t = _one()
    assert (t.name, t.source, t.manifest, t.mask, t.datasets, t.max_images) == (
        "a",
        "dsb2018",
        None,
        None,
        None,
        None,
    )
    assert (t.tile, t.split_axis, t.image_size, t.channels) == (32, "x", None, "each")
    assert t.baselines == ["otsu", "background"] and t.otsu_channel is None and t.heads == ["linear", "mlp"]
    assert (t.hidden, t.steps, t.lr, t.batch_size, t.bootstrap) == (64, 300, 3e-2, 64, 2000)
    assert t.seeds == [0, 1, 2] and t.size_bins == [1.0, 2.0, 3.0, 4.0]
    assert (t.figure_head, t.save_probes, t.normalize, t.num_threads) == ("mlp", True, "percentile", 1)
    assert list(t.models) == ["h"]


def test_every_key_is_read() -> None:
    (t,) = parse_dense_tasks([{
        "name": "b", "manifest": "m/man.csv", "mask": "nucleus", "datasets": ["d1", 2], "max_images": "5",
        "tile": 16.0, "split_axis": "y", "image_size": 48, "channels": "pooled", "models": {"h": "handmade"},
        "baselines": "otsu", "otsu_channel": "DAPI", "heads": "linear", "hidden": 8, "steps": 7, "lr": "0.5",
        "batch_size": 3, "seeds": [4, 2], "size_bins": [3, 1.5], "bootstrap": 9, "figure_head": "linear",
        "save_probes": 0, "normalize": "minmax", "num_threads": 2,
    }], "/base")  # fmt: skip
    assert t.manifest == Path("/base/m/man.csv") and t.source is None
    assert (t.mask, t.datasets, t.max_images, t.tile, t.split_axis, t.image_size, t.channels) == (
        "nucleus",
        ["d1", "2"],
        5,
        16,
        "y",
        48,
        "pooled",
    )
    assert type(t.tile) is int and type(t.max_images) is int
    assert (t.baselines, t.otsu_channel, t.heads, t.hidden, t.steps, t.lr, t.batch_size) == (
        ["otsu"],
        "DAPI",
        ["linear"],
        8,
        7,
        0.5,
        3,
    )
    assert (t.seeds, t.size_bins, t.bootstrap, t.figure_head) == ([4, 2], [1.5, 3.0], 9, "linear")
    assert (t.save_probes, t.normalize, t.num_threads) == (False, "minmax", 2)
    assert _one(num_threads=None).num_threads is None
    assert _one(datasets=[]).datasets is None and _one(baselines=[]).baselines == []
    assert _one(baselines=None).baselines == []


def test_seeds() -> None:
    assert _one(seeds=2).seeds == [0, 1] and _one(seeds=1.0).seeds == [0]
    assert _one(seeds=[0]).seeds == [0]
    (t,) = parse_dense_tasks([BASE], seeds=[7, 8])
    assert t.seeds == [7, 8]
    (t,) = parse_dense_tasks([dict(BASE, seeds=[1])], seeds=[7, 8])
    assert t.seeds == [1]
    _refused("dense.a.seeds: expected an integer >= 1, got 0", seeds=0)
    _refused("dense.a.seeds: expected an integer >= 0, got -1", seeds=[-1])
    _refused("dense.a.seeds: expected at least one seed, got []", seeds=[])


def test_heads_and_figure_head() -> None:
    assert _one(heads=["mlp", "linear"]).figure_head == "linear"
    assert _one(heads=["mlp", "linear"], figure_head="mlp").figure_head == "mlp"
    t = _one(heads=[])
    assert t.heads == [] and t.figure_head is None
    _refused("dense.a.figure_head: expected one of 'linear', got 'mlp'", heads=["linear"], figure_head="mlp")
    _refused(
        "dense.a.baselines: expected one of 'otsu', 'background', got 'noise'", baselines=["otsu", "noise"]
    )


@pytest.mark.parametrize("key,bad,low", [
    ("tile", 0, 1), ("image_size", 0, 1), ("max_images", 0, 1), ("hidden", 0, 1), ("steps", 0, 1),
    ("batch_size", 0, 1), ("bootstrap", 0, 1), ("num_threads", 0, 1),
])  # fmt: skip
def test_integer_bounds(key: str, bad: int, low: int) -> None:
    assert getattr(_one(**{key: low}), key) == low
    _refused(f"dense.a.{key}: expected an integer >= {low}, got {bad}", **{key: bad})


def test_lr_and_choices() -> None:
    assert _one(lr=1e-9).lr == 1e-9
    _refused("dense.a.lr: expected a number > 0, got 0", lr=0)
    _refused("dense.a.split_axis: expected one of 'x', 'y', got 'z'", split_axis="z")
    _refused("dense.a.channels: expected one of 'each', 'pooled', got 'all'", channels="all")


def test_structure_messages() -> None:
    _refused("dense.#1: expected a mapping, got 3", raw=[BASE, 3])
    _refused("dense.#0.name: required", raw=[{"source": "dsb2018", "models": {"h": "handmade"}}])
    # the label is the name, or #i before the name is checked
    _refused("dense.#0.tiles: unknown key (did you mean 'tile'?); valid keys: " + ", ".join(sorted([
        "name", "source", "manifest", "mask", "datasets", "max_images", "tile", "split_axis", "image_size",
        "channels", "models", "baselines", "otsu_channel", "heads", "hidden", "steps", "lr", "batch_size",
        "seeds", "size_bins", "bootstrap", "figure_head", "save_probes", "normalize", "num_threads"])),
        raw=[{"tiles": 3}])  # fmt: skip
    _refused("dense.a: give exactly one of source: dsb2018 or manifest: FILE", source=None)
    _refused("dense.a: give exactly one of source: dsb2018 or manifest: FILE", manifest="m.csv")
    _refused("dense.a.source: expected 'dsb2018' (or use manifest:), got 'bbbc'", source="bbbc")
    _refused("dense must be a list of tasks, got str", raw="tasks")
    _refused("dense task names must be unique, got ['a', 'b', 'a']", raw=[BASE, dict(BASE, name="b"), BASE])
    assert parse_dense_tasks(None) == [] and parse_dense_tasks([]) == []
    (t,) = parse_dense_tasks(BASE)  # one mapping is one task
    assert t.name == "a"
    (t,) = parse_dense_tasks([dict(BASE, name=5)])
    assert t.name == "5"


def test_manifest_path_resolves_against_the_base(tmp_path: Path) -> None:
    (t,) = parse_dense_tasks([{"name": "m", "manifest": "x/man.csv", "models": {"h": "handmade"}}], tmp_path)
    assert t.manifest == tmp_path / "x" / "man.csv"
    (t,) = parse_dense_tasks([{"name": "m", "manifest": "man.csv", "models": {"h": "handmade"}}])
    assert t.manifest == Path("man.csv")


def test_models_are_required_and_the_message_says_what_they_may_be() -> None:
    for models in (None, {}):
        _refused("dense.a.models: required (name -> folder, registered name or handmade)", models=models)
