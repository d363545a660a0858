"""Fuzz suite (issue 17): every bad input a user can hand ``chada`` ends in a clean message.

Each :class:`Case` builds one bad input beside a few good images (a corrupt, truncated or garbage
TIFF/PNG/Zarr/.npy, NaN/inf pixels, 0 or 11 channels, duplicate stains, a directory or a missing
file; a header-only, garbage or directory manifest; bad YAML) and runs the real command line
(``chada.cli.main`` in-process, a few in a subprocess) on it. Each run must:

- exit with the case's code (2 = bad input);
- name the image id and / or the file in its output;
- print no ``Traceback``.

To add a case (checkpoints, safetensors, config.json, resume with changed inputs come later), append
a :class:`Case` to :data:`CASES` with a builder that writes the input under ``tmp`` and returns the
path the commands take (manifest or config), and the commands it must be refused by.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from chada.cli import main

BAD_ID = "bad-7"
SIZE = 16
GOOD_NAMES = "DAPI;Actin"


# ------------------------------------------------------------------------------------------ inputs
def _good_images(tmp: Path, n: int = 3) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        arr = (rng.random((2, SIZE, SIZE)) * 4000).astype(np.uint16)
        tifffile.imwrite(tmp / f"good{i}.tif", arr, photometric="minisblack", metadata={"axes": "CYX"})
        rows.append(dict(image_id=f"good{i}", dataset="d", file=f"good{i}.tif", channel_names=GOOD_NAMES))
    return rows


def _manifest(tmp: Path, bad_file: str, names: str = GOOD_NAMES, extra: list[dict] | None = None) -> Path:
    rows = _good_images(tmp)
    rows.append(dict(image_id=BAD_ID, dataset="d", file=bad_file, channel_names=names))
    rows += extra or []
    path = tmp / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _tiff_bytes(arr: np.ndarray, compression: str | None = "zlib") -> bytes:
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="minisblack", metadata={"axes": "CYX"}, compression=compression)
    return buf.getvalue()


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _pixels(n_channels: int = 2) -> np.ndarray:
    return (np.random.default_rng(2).random((n_channels, SIZE, SIZE)) * 4000).astype(np.uint16)


def _write(name: str, data: bytes | Callable[[Path], None], names: str = GOOD_NAMES) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        target = tmp / name
        if callable(data):
            data(target)
        else:
            target.write_bytes(data)
        return _manifest(tmp, name, names)

    return build


def _tiff_truncated(target: Path) -> None:
    raw = _tiff_bytes(_pixels())
    target.write_bytes(raw[: len(raw) // 2])


def _tiff_corrupt(target: Path) -> None:
    # a valid header and IFD whose zlib stream is garbage
    raw = bytearray(_tiff_bytes(_pixels()))
    start = raw.find(zlib.compress(_pixels()[0].tobytes())[:2])
    for i in range(max(start, 16), min(max(start, 16) + 64, len(raw))):
        raw[i] ^= 0x5A
    target.write_bytes(bytes(raw))


def _tiff_raw_truncated(target: Path) -> None:
    raw = _tiff_bytes(_pixels(), compression=None)
    target.write_bytes(raw[: len(raw) // 2])


def _garbage(magic: bytes) -> bytes:
    return magic + np.random.default_rng(3).integers(0, 256, 600, dtype=np.uint8).tobytes()


def _png_truncated(target: Path) -> None:
    raw = _png_bytes()
    target.write_bytes(raw[: len(raw) // 2])


def _zarr_ok(target: Path, arr: np.ndarray | None = None) -> None:
    import zarr

    arr = _pixels() if arr is None else arr
    z = zarr.create_array(str(target), shape=arr.shape, chunks=(1, SIZE, SIZE), dtype=arr.dtype)
    z[...] = arr


def _zarr_chunk(target: Path, how: str) -> None:
    _zarr_ok(target)
    chunk = sorted(p for p in target.rglob("*") if p.is_file() and p.name != "zarr.json")[-1]
    if how == "garbage":
        chunk.write_bytes(b"not a chunk" * 4)
    else:
        chunk.unlink()


def _zarr_bad_meta(target: Path) -> None:
    target.mkdir()
    (target / "zarr.json").write_text("{this is not json")


def _npy(arr: np.ndarray) -> Callable[[Path], None]:
    def write(target: Path) -> None:
        np.save(target, arr)

    return write


def _tif(arr: np.ndarray) -> Callable[[Path], None]:
    def write(target: Path) -> None:
        target.write_bytes(_tiff_bytes(arr))

    return write


def _with_nonfinite(value: float) -> np.ndarray:
    arr = _pixels().astype(np.float32)
    arr[1, 3, 4] = value
    return arr


def _mkdir(target: Path) -> None:
    target.mkdir()


def _no_file(target: Path) -> None:
    pass


def _header_only(tmp: Path) -> Path:
    path = tmp / "manifest.csv"
    path.write_text("image_id,dataset,file,channel_names\n")
    return path


def _manifest_dir(tmp: Path) -> Path:
    path = tmp / "manifest.csv"
    path.mkdir()
    return path


def _manifest_garbage(tmp: Path) -> Path:
    path = tmp / "manifest.csv"
    path.write_bytes(_garbage(b"\xff\xfe\x00"))
    return path


def _manifest_ragged(tmp: Path) -> Path:
    path = tmp / "manifest.csv"
    _good_images(tmp)
    path.write_text("image_id,dataset,file,channel_names\ngood0,d,good0.tif,DAPI;Actin\ngood1,d,good1.tif,DAPI,x,y\n")
    return path


def _manifest_parquet_garbage(tmp: Path) -> Path:
    path = tmp / "manifest.parquet"
    path.write_bytes(b"PAR1" + _garbage(b"") + b"PAR1")
    return path


def _manifest_no_column(tmp: Path) -> Path:
    rows = _good_images(tmp)
    path = tmp / "manifest.csv"
    pd.DataFrame(rows).drop(columns=["channel_names"]).to_csv(path, index=False)
    return path


def _manifest_missing(tmp: Path) -> Path:
    return tmp / "no_such_manifest.csv"


def _dup_ids(tmp: Path) -> Path:
    rows = _good_images(tmp)
    rows.append(dict(rows[0], dataset="again"))  # row 4 repeats row 1's id
    path = tmp / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _yaml(text: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = tmp / "config.yaml"
        path.write_text(text)
        return path

    return build


def _config_dir(tmp: Path) -> Path:
    path = tmp / "config.yaml"
    path.mkdir()
    return path


# ---------------------------------------------------------------------------------------- commands
def _tiny_pretrain(manifest: Path, out: Path) -> list[str]:
    return [
        "model.name=chada_vit_test", "model.overrides.img_size=16", "head.out_dim=16", "head.hidden_dim=16",
        "head.bottleneck_dim=8", "optim.epochs=1", "optim.warmup_epochs=0", "dino.warmup_teacher_temp_epochs=0",
        "optim.batch_size_per_gpu=2", "augment.global_size=16",
        "augment.local_size=8", "augment.n_local=1", f"data.manifest={manifest}", "data.num_workers=0",
        "run.device=cpu", "run.threads=1", "run.progress=false", "run.tensorboard=false",
        f"run.output_dir={out}",
    ]  # fmt: skip


def argv_for(command: str, path: Path, out: Path) -> list[str]:
    """The command line of ``command`` on input ``path`` (manifest, or config for ``pretrain-config``)."""
    if command == "check":
        return ["data", "check", str(path)]
    if command == "embed":
        return ["embed", "--model", "chada_vit_test", "--manifest", str(path), "--out", str(out / "e.npz"), "--quiet"]
    if command == "embed-workers":
        return ["embed", "--model", "chada_vit_test", "--manifest", str(path), "--out", str(out / "e.npz"),
                "--quiet", "--workers", "1", "--batch-size", "1"]  # fmt: skip
    if command == "features":
        return ["features", "--manifest", str(path), "--kind", "shortcut", "--out", str(out / "f.npz"), "--quiet"]
    if command == "pretrain":
        return ["pretrain", *_tiny_pretrain(path, out / "run")]
    if command == "pretrain-workers":
        return ["pretrain", *_tiny_pretrain(path, out / "run"), "data.num_workers=1"]
    if command == "pretrain-config":
        return ["pretrain", "--config", str(path), "--print-config"]
    if command == "evaluate-config":
        return ["evaluate", "--config", str(path), "--out", str(out / "eval"), "--quiet"]
    raise ValueError(command)


READERS = ("check", "embed", "features")  # every command that reads a manifest's pixels, cheap ones


@dataclass(frozen=True)
class Case:
    """One bad input, the commands that must refuse it, and what their message must name."""

    name: str
    build: Callable[[Path], Path]
    commands: tuple[str, ...] = READERS
    code: int = 2
    needles: tuple[str, ...] = (BAD_ID,)
    # per-command needles replacing ``needles`` (e.g. data check names the row, embed the id)
    needles_by_command: dict[str, tuple[str, ...]] = field(default_factory=dict)


CASES: list[Case] = [
    # --- image files: corrupt, truncated, garbage, wrong kind of path
    Case("tiff-truncated", _write("bad.tif", _tiff_truncated), READERS + ("pretrain", "embed-workers"),
         needles=(BAD_ID, "bad.tif")),
    Case("tiff-corrupt-zlib", _write("bad.tif", _tiff_corrupt), needles=(BAD_ID, "bad.tif")),
    Case("tiff-uncompressed-truncated", _write("bad.tif", _tiff_raw_truncated), needles=(BAD_ID, "bad.tif")),
    Case("tiff-garbage", _write("bad.tif", _garbage(b"II*\x00")), needles=(BAD_ID, "bad.tif")),
    Case("tiff-empty-file", _write("bad.tif", b""), needles=(BAD_ID, "bad.tif")),
    Case("png-truncated", _write("bad.png", _png_truncated), needles=(BAD_ID, "bad.png")),
    Case("png-garbage", _write("bad.png", _garbage(b"\x89PNG\r\n\x1a\n")), needles=(BAD_ID, "bad.png")),
    Case("jpeg-is-text", _write("bad.jpg", b"hello, I am not a JPEG\n"), needles=(BAD_ID, "bad.jpg")),
    Case("zarr-garbage-chunk", _write("bad.zarr", lambda t: _zarr_chunk(t, "garbage")),
         READERS + ("pretrain-workers",), needles=(BAD_ID, "bad.zarr")),
    Case("zarr-missing-chunk", _write("bad.zarr", lambda t: _zarr_chunk(t, "missing")),
         needles=(BAD_ID, "bad.zarr", "missing")),
    Case("zarr-bad-metadata", _write("bad.zarr", _zarr_bad_meta), needles=(BAD_ID, "bad.zarr")),
    Case("zarr-empty-folder", _write("bad.zarr", _mkdir), needles=(BAD_ID, "bad.zarr")),
    Case("npy-garbage", _write("bad.npy", _garbage(b"\x93NUMPY")), needles=(BAD_ID, "bad.npy")),
    Case("directory-as-image", _write("bad.tif", _mkdir), needles=(BAD_ID, "bad.tif", "directory")),
    Case("missing-image", _write("bad.tif", _no_file), READERS + ("pretrain",), needles=(BAD_ID, "bad.tif")),
    Case("unsupported-suffix", _write("bad.bmp", b"BM"), needles=(BAD_ID, "bad.bmp")),
    # --- pixel values and channel counts
    Case("nan-pixel", _write("bad.tif", _tif(_with_nonfinite(np.nan))), READERS + ("pretrain",),
         needles=(BAD_ID, "bad.tif", "channel 1", "'Actin'", "NaN")),
    Case("inf-pixel", _write("bad.npy", _npy(_with_nonfinite(np.inf))), needles=(BAD_ID, "bad.npy", "'Actin'", "inf")),
    Case("zero-channels", _write("bad.npy", _npy(np.zeros((0, SIZE, SIZE), np.float32)), names=""),
         needles=(BAD_ID,)),
    # embed: the model's C_max check names batch positions, not ids (the id comes with embed's rework)
    Case("eleven-channels", _write("bad.tif", _tif(_pixels(11)), names=";".join(f"c{i}" for i in range(11))),
         ("check", "embed", "features"), needles=(BAD_ID, "11"), needles_by_command={"embed": ("C_max=10", "11")}),
    Case("channel-name-count", _write("bad.tif", _tif(_pixels(2)), names="DAPI"), READERS + ("pretrain",),
         needles=(BAD_ID,)),
    Case("duplicate-stains", _write("bad.tif", _tif(_pixels(2)), names="DAPI;dapi"), READERS + ("pretrain",),
         needles=(BAD_ID, "appears twice")),
    Case("zero-channels-pretrain", _write("bad.npy", _npy(np.zeros((0, SIZE, SIZE), np.float32)), names=""),
         ("pretrain",), needles=(BAD_ID, "empty")),
    # --- manifests
    Case("manifest-header-only", _header_only, READERS + ("pretrain",), needles=("0 images",)),
    Case("manifest-is-directory", _manifest_dir, READERS + ("pretrain",), needles=("manifest.csv", "directory")),
    Case("manifest-missing", _manifest_missing, READERS, needles=("no_such_manifest.csv",)),
    Case("manifest-binary-garbage", _manifest_garbage, READERS, needles=("manifest.csv",)),
    Case("manifest-ragged-rows", _manifest_ragged, READERS, needles=("manifest.csv", "line 3")),
    Case("manifest-parquet-garbage", _manifest_parquet_garbage, READERS, needles=("manifest.parquet",)),
    Case("manifest-missing-column", _manifest_no_column, READERS, needles=("channel_names",)),
    Case("duplicate-image-ids", _dup_ids, ("check",), needles=("good0", "row 1", "row 4")),
    # --- configs
    Case("yaml-syntax", _yaml("optim:\n  lr: [1, 2\n  epochs: 3\n"), ("pretrain-config", "evaluate-config"),
         needles=("config.yaml", "YAML", "line 3")),
    Case("yaml-not-a-mapping", _yaml("- just\n- a list\n"), ("pretrain-config",), needles=("config",)),
    Case("config-is-directory", _config_dir, ("pretrain-config", "evaluate-config"), needles=("config.yaml",)),
]  # fmt: skip

RUNS = [pytest.param(case, cmd, id=f"{case.name}-{cmd}") for case in CASES for cmd in case.commands]


@pytest.mark.parametrize(("case", "command"), RUNS)
def test_bad_input_gets_a_clean_message(case: Case, command: str, tmp_path: Path, capfd) -> None:
    path = case.build(tmp_path)
    rc = main(argv_for(command, path, tmp_path / "out"))
    out, err = capfd.readouterr()
    text = out + err
    assert rc == case.code, text
    assert "Traceback" not in text, text
    for needle in case.needles_by_command.get(command, case.needles):
        assert needle in text, (needle, text)
    # a report of one or two lines (data check lists one line per problem, then a total)
    if command != "check":
        lines = err.splitlines()
        first = next(i for i, ln in enumerate(lines) if ln.startswith("chada ") and ": error: " in ln)
        assert len(lines) - first <= 2, err


# --------------------------------------------------------------------------- behaviour beside exits
def test_duplicate_ids_name_the_first_row_not_themselves(tmp_path, capfd):
    path = _dup_ids(tmp_path)
    assert main(["data", "check", str(path)]) == 2
    err = capfd.readouterr().err
    row1 = next(ln for ln in err.splitlines() if ln.startswith("row 1 "))
    row4 = next(ln for ln in err.splitlines() if ln.startswith("row 4 "))
    assert "row(s) 4" in row1 and "row 1" not in row1.split("]", 1)[1]
    assert "already used on row 1" in row4


def test_nan_replace_is_a_warning_naming_each_image(tmp_path, capfd):
    path = _write("bad.tif", _tif(_with_nonfinite(np.nan)))(tmp_path)
    assert main(["data", "check", str(path), "--nan-policy", "replace"]) == 0
    out, err = capfd.readouterr()
    assert "OK (4 images, 1 warning(s))" in out and BAD_ID in err and "nan_pixels, warning" in err

    import warnings

    from chada.data.dataset import ManifestDataset
    from chada.data.readers import NonFinitePixelWarning

    ds = ManifestDataset(path, nan_policy="replace", normalize="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = {ds.frame["image_id"][i]: ds.read(i)[0] for i in range(len(ds))}
    touched = [str(w.message) for w in caught if issubclass(w.category, NonFinitePixelWarning)]
    assert len(touched) == 1 and BAD_ID in touched[0] and "'Actin'" in touched[0]
    bad = images[BAD_ID]
    raw = _with_nonfinite(np.nan)[1]
    assert bool(bad.isfinite().all())
    assert float(bad[1, 3, 4]) == float(np.median(raw[np.isfinite(raw)]))  # the documented fill
    ds0 = ManifestDataset(path, nan_policy="replace", nan_fill=0.0, normalize="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert float(ds0.read(3)[0][1, 3, 4]) == 0.0


def test_cli_warnings_are_one_line(tmp_path, capfd):
    path = _manifest(tmp_path, "good0.tif")
    # Actin is outside the given order: the channel policy warns (once) through warnings.warn
    argv = ["embed", "--model", "chada_vit_test", "--manifest", str(path), "--out", str(tmp_path / "e.npz"),
            "--quiet", "--channel-order", "DAPI"]  # fmt: skip
    assert main(argv) == 0
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if "warning" in ln.lower()]
    assert len(lines) == 1, err
    assert lines[0].startswith("chada embed: warning: UnknownChannelWarning: image 'good0': channel 'Actin'")
    assert ".py:" not in err and "warnings.warn" not in err  # no file:line nor source line


def test_strict_channels_without_a_recorded_order_says_how_to_give_one(tmp_path, capfd):
    path = _manifest(tmp_path, "good0.tif")
    argv = ["embed", "--model", "chada_vit_test", "--manifest", str(path), "--out", str(tmp_path / "e.npz"),
            "--quiet", "--strict-channels"]  # fmt: skip
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert "--channel-order" in err and "Traceback" not in err
    assert main([*argv, "--channel-order", "DAPI,Actin"]) == 0


def test_internal_errors_exit_1_and_debug_shows_the_traceback(tmp_path, capfd, monkeypatch):
    import chada.cli.data as data_cli

    def boom(args):
        raise KeyError("a bug")

    monkeypatch.setattr(data_cli, "_run_check", boom)
    # the handler is bound at parser build time: rebuild through main
    assert main(["data", "check", "x.csv"]) == 1
    err = capfd.readouterr().err
    assert err.startswith("chada data check: internal error: KeyError: 'a bug' (re-run with --debug")
    with pytest.raises(KeyError):
        main(["--debug", "data", "check", "x.csv"])
    monkeypatch.setenv("CHADA_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["data", "check", "x.csv"])


def test_worker_messages_are_unwrapped():
    from chada.errors import describe

    wrapped = ValueError(
        "Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 3, in f\n    raise ImageReadError(msg)\n'
        "chada.data.readers.ImageReadError: image 'a7': /d/a7.tif: cannot read image\n"
    )
    assert describe(wrapped) == "image 'a7': /d/a7.tif: cannot read image"


# ------------------------------------------------------------------------------------ subprocesses
def _run_cli(args: list[str], debug_env: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CHADA_DEBUG"}
    if debug_env:
        env["CHADA_DEBUG"] = "1"
    code = "import sys; from chada.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


def test_real_console_script_on_a_truncated_tiff_with_workers(tmp_path):
    path = _write("bad.tif", _tiff_truncated)(tmp_path)
    proc = _run_cli(["embed", "--model", "chada_vit_test", "--manifest", str(path), "--out",
                     str(tmp_path / "e.npz"), "--quiet", "--workers", "2", "--batch-size", "1"])  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert BAD_ID in proc.stderr and "bad.tif" in proc.stderr
    debug = _run_cli(["features", "--manifest", str(path), "--kind", "shortcut", "--out", str(tmp_path / "f.npz"),
                      "--quiet"], debug_env=True)  # fmt: skip
    assert debug.returncode == 1 and "Traceback" in debug.stderr and BAD_ID in debug.stderr
    shown = _run_cli(["--debug", "embed", "--model", "chada_vit_test", "--manifest", str(path), "--out",
                      str(tmp_path / "e.npz"), "--quiet"])  # fmt: skip
    assert shown.returncode == 1 and "Traceback" in shown.stderr and BAD_ID in shown.stderr
