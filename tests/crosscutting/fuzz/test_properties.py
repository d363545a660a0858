"""Property-based fuzzing (Hypothesis) of manifests, array shapes and the normaliser (issue 17).

- Random manifests (repeated ids, channel-name lists with case-folded duplicates and blanks, files
  with 0/1/2/3/11 channels, NaN pixels, missing files): ``check_manifest`` reports exactly what an
  independent oracle expects, ``chada data check`` exits 2 exactly when something is wrong, and
  ``chada embed`` refuses exactly the manifests ``data check`` refuses (ids aside: embed's duplicate
  id check comes with its resume rework).
- Random arrays of any rank, size (0 included) and dtype saved as .npy: the reader returns a float32
  ``[C, H, W]`` holding every value, or raises ``ImageReadError`` - never another exception.
- Random NaN/inf masks: the normaliser keeps finite pixels in [0, 1] and computed from the finite
  pixels only, and NaN only where the input was NaN.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from chada.cli import main
from chada.data.manifest import check_manifest
from chada.data.normalize import normalize_channels
from chada.data.readers import ImageReadError, NonFinitePixelError, read_image

FILES = {  # name -> (channel count, has NaN); None = missing on disk
    "c1.tif": (1, False),
    "c2.tif": (2, False),
    "c3.tif": (3, False),
    "c11.tif": (11, False),
    "nan2.tif": (2, True),
    "absent.tif": None,
}
NAMES = ["DAPI", "dapi", "Actin", "Mito", "ER", ""]


def fuzz(max_examples: int) -> settings:
    """Deterministic (derandomized, no example database) so CI runs the same examples every time."""
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )  # fmt: skip


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz_images")
    rng = np.random.default_rng(0)
    for name, spec in FILES.items():
        if spec is None:
            continue
        c, nan = spec
        arr = (rng.random((c, 16, 16)) * 1000).astype(np.float32)
        if nan:
            arr[1, 2, 2] = np.nan
        tifffile.imwrite(d / name, arr, photometric="minisblack", metadata={"axes": "CYX"})
    return d


DISTINCT = ["DAPI", "Actin", "Mito", "ER", "Golgi", "RNA", "AGP", "Tubulin", "Nucleoli", "Membrane", "Lyso"]


@st.composite
def _row(draw) -> tuple[str, str, list[str]]:
    """One row; most of them valid so that both outcomes of every check get exercised."""
    iid = draw(st.sampled_from(["a", "b", "c", "d", "e", "f"]))  # small id pool: duplicates happen
    file = draw(st.sampled_from(["c1.tif", "c2.tif", "c3.tif"] * 3 + sorted(FILES)))
    spec = FILES[file]
    if spec is not None and draw(st.integers(0, 3)) > 0:  # the right number of distinct names
        names = draw(st.lists(st.sampled_from(DISTINCT), min_size=spec[0], max_size=spec[0], unique=True))
    else:  # anything: blanks, case-folded duplicates, wrong counts
        names = draw(st.lists(st.sampled_from(NAMES), min_size=0, max_size=4))
    return iid, file, names


rows_strategy = st.lists(_row(), min_size=0, max_size=5)


def _write(image_dir: Path, rows: list[tuple[str, str, list[str]]], name: str = "m.csv") -> Path:
    df = pd.DataFrame(
        [dict(image_id=i, dataset="d", file=f, channel_names=";".join(n)) for i, f, n in rows],
        columns=["image_id", "dataset", "file", "channel_names"],
    )
    path = image_dir / name
    df.to_csv(path, index=False)
    return path


def _oracle(rows: list[tuple[str, str, list[str]]], with_ids: bool = True) -> set[tuple[int | None, str]]:
    """The problems a manifest has, worked out directly from how it was built."""
    if not rows:
        return {(None, "empty")}
    expected: set[tuple[int | None, str]] = set()
    ids = [r[0] for r in rows]
    for k, (iid, file, names) in enumerate(rows, start=1):
        if with_ids and ids.count(iid) > 1:
            expected.add((k, "duplicate_id"))
        kept = [n for n in names if n]  # blanks vanish when the list is split
        if not kept:
            expected.add((k, "missing_value"))
        elif len({n.lower() for n in kept}) < len(kept):
            expected.add((k, "channel_names"))
        spec = FILES[file]
        if spec is None:
            expected.add((k, "missing_file"))
            continue
        c, nan = spec
        if c > 10:
            expected.add((k, "channel_count"))
        if kept and len(kept) != c:
            expected.add((k, "channel_name_count"))
        if nan:
            expected.add((k, "nan_pixels"))
    return expected


def _cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue() + err.getvalue()


@fuzz(60)
@given(rows=rows_strategy)
def test_check_finds_exactly_the_problems_of_a_random_manifest(image_dir, rows):
    path = _write(image_dir, rows)
    found = {(p.row, p.kind) for p in check_manifest(path)}
    expected = _oracle(rows)
    assert found == expected
    rc, text = _cli(["data", "check", str(path)])
    assert rc == (2 if expected else 0), text
    assert "Traceback" not in text


@fuzz(20)
@given(rows=rows_strategy.map(lambda rs: list({r[0]: r for r in rs}.values())))  # unique ids
def test_embed_refuses_exactly_what_check_refuses(image_dir, tmp_path_factory, rows):
    path = _write(image_dir, rows, "e.csv")
    rc_check, _ = _cli(["data", "check", str(path)])
    out = tmp_path_factory.mktemp("emb") / "e.npz"
    rc_embed, text = _cli(
        ["embed", "--model", "chada_vit_test", "--manifest", str(path), "--out", str(out), "--quiet"]
    )
    assert rc_embed == rc_check, text
    assert "Traceback" not in text


shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)
dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_])


@fuzz(80)
@given(arr=hnp.arrays(dtypes, shapes))
def test_reader_returns_chw_float32_or_a_named_error(tmp_path_factory, arr):
    d = tmp_path_factory.getbasetemp() / "fuzz_npy"
    d.mkdir(exist_ok=True)
    path = d / "x.npy"
    np.save(path, arr)
    try:
        out = read_image(path)
    except NonFinitePixelError as exc:
        assert np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all()
        assert str(path) in str(exc)
        return
    except ImageReadError as exc:
        assert str(path) in str(exc)
        if "do not fit float32" in str(exc):
            finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
            assert np.abs(finite.astype(np.float64)).max() > np.finfo(np.float32).max
            return
        # only arrays the channel-axis rule cannot read are refused
        squeezed = arr
        while squeezed.ndim > 3 and squeezed.shape[0] == 1:
            squeezed = squeezed[0]
        assert squeezed.ndim not in (2, 3)
        return
    assert out.dtype == np.float32 and out.ndim == 3
    assert out.size == arr.size  # the layout rule moves axes, it never drops values
    assert np.array_equal(np.sort(out.ravel()), np.sort(arr.astype(np.float32).ravel()))


@fuzz(60)
@given(
    base=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(2, 6), st.integers(2, 6)),
        elements=st.floats(0, 1000, width=32),
    ),  # fmt: skip
    data=st.data(),
    method=st.sampled_from(["percentile", "minmax"]),
)
def test_normaliser_ignores_non_finite_pixels(base, data, method):
    mask = data.draw(hnp.arrays(np.int8, base.shape, elements=st.sampled_from([0, 0, 0, 1, 2, 3])))
    bad = base.copy()
    bad[mask == 1] = np.nan
    bad[mask == 2] = np.inf
    bad[mask == 3] = -np.inf
    out = normalize_channels(bad, method)
    finite = np.isfinite(bad)
    assert np.array_equal(np.isnan(out), np.isnan(bad))  # NaN only where the input was NaN
    assert ((out[~np.isnan(out)] >= 0) & (out[~np.isnan(out)] <= 1)).all()
    if method == "minmax":
        # filling non-finite pixels with a finite value of the same channel leaves min/max as they are
        filled = bad.copy()
        for c in range(bad.shape[0]):
            vals = bad[c][finite[c]]
            filled[c][~finite[c]] = vals.min() if vals.size else 0.0
        ref = normalize_channels(filled, "minmax")
        keep = finite & np.array([finite[c].any() for c in range(bad.shape[0])])[:, None, None]
        np.testing.assert_allclose(out[keep], ref[keep], atol=1e-6)


# ------------------------------------------------------------------ issue 26: model configs, patches, headers
_CONFIG_VALUES = st.one_of(
    st.integers(-3, 70), st.sampled_from([1e9, 0.5, 2.0, float("nan"), True, False, None, "big", "8", [8]])
)


def _config_oracle(cfg: dict) -> bool:
    """Independent statement of the rules of chada.models.validate for the fields drawn below."""

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not all(
        is_int(cfg[k]) and cfg[k] >= 1 for k in ("embed_dim", "num_heads", "patch_size", "img_size", "depth")
    ):
        return False
    return cfg["embed_dim"] % cfg["num_heads"] == 0 and cfg["img_size"] % cfg["patch_size"] == 0


@fuzz(200)
@given(values=st.fixed_dictionaries({k: _CONFIG_VALUES for k in ("embed_dim", "num_heads", "patch_size", "img_size",
                                                                  "depth")}))  # fmt: skip
def test_model_config_is_refused_exactly_when_a_value_breaks_a_rule(values):
    from chada.errors import InputError
    from chada.models.chada_vit import ChAdaViTConfig
    from chada.models.validate import validate_config

    try:
        validate_config(ChAdaViTConfig, values, "model/config.json")
        accepted = True
    except InputError as exc:
        accepted = False
        assert str(exc).startswith("model/config.json: ") and "\n" not in str(exc)
    assert accepted == _config_oracle(values), values


@fuzz(100)
@given(h=st.integers(1, 70), w=st.integers(1, 70), p=st.sampled_from([1, 4, 8, 16]), c=st.integers(1, 4))
def test_forward_check_refuses_exactly_the_images_that_do_not_split_into_patches(h, w, p, c):
    import torch

    from chada.encode.budget import check_forward
    from chada.errors import InputError
    from chada.models.chada_vit import ChAdaViTConfig

    module = type(
        "M", (), {"config": ChAdaViTConfig(embed_dim=8, num_heads=2, depth=1, patch_size=p, img_size=p * 4)}
    )()
    sample = {"image": torch.zeros(c, h, w), "image_id": "img-9"}
    fits = h >= p and w >= p and h % p == 0 and w % p == 0
    try:
        check_forward(module, [sample], "cpu", lambda iid: f"{iid}.tif")
        assert fits, (h, w, p)
    except InputError as exc:
        assert not fits, (h, w, p)
        assert "'img-9'" in str(exc) and "img-9.tif" in str(exc) and "--image-size" in str(exc)


@fuzz(100)
@given(header=st.lists(st.sampled_from(["image_id", "dataset", "file", "channel_names", "label", " label"]),
                       min_size=1, max_size=8))  # fmt: skip
def test_a_repeated_header_column_is_found_whatever_the_header(tmp_path_factory, header):
    from chada.data.manifest import ManifestError, load_manifest

    path = tmp_path_factory.mktemp("hdr") / "m.csv"
    path.write_text(",".join(header) + "\n" + ",".join("x" for _ in header) + "\n")
    stripped = [h.strip() for h in header]
    repeated = {h for h in stripped if stripped.count(h) > 1}
    try:
        load_manifest(path)
        assert not repeated, header
    except ManifestError as exc:
        assert repeated and all(f"'{h}'" in str(exc) for h in repeated), (header, str(exc))
