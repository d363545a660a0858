"""Fuzz suite (issue 17): every bad input a user can hand ``chada`` ends in a clean message.

Each :class:`Case` builds one bad input beside a few good images (a corrupt, truncated or garbage
TIFF/PNG/Zarr/.npy, NaN/inf pixels, 0 or 11 channels, duplicate stains, a directory or a missing
file; a header-only, garbage or directory manifest; bad YAML) and runs the real command line
(``chada.cli.main`` in-process, a few in a subprocess) on it. Each run must:

- exit with the case's code (2 = bad input);
- name the image id and / or the file in its output;
- print no ``Traceback``.

To add a case (checkpoints, safetensors, config.json come later), append a :class:`Case` to
:data:`CASES` with a builder that writes the input under ``tmp`` and returns the path the commands take
(manifest or config), and the commands it must be refused by.

Outputs: every command that writes (:data:`WRITERS`) refuses an output of the wrong kind (a folder
where a file is expected, or the reverse), an output under a file and a read-only location, before
any work starts. Resume: ``chada embed`` killed with SIGKILL while writing a chunk, then re-run with
unchanged inputs, with changed inputs, or with a damaged part file, gives features bit-identical to a
fresh run.
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
from tests.helpers.fuzz import (
    BAD_ID,
    GOOD_NAMES,
    SIZE,
    bad_manifest,
    good_images,
    model_folder_case,
    run_without_override,
    tif_case,
    tiff_bytes,
    write_case,
)

# ------------------------------------------------------------------------------------------ inputs


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _pixels(n_channels: int = 2) -> np.ndarray:
    return (np.random.default_rng(2).random((n_channels, SIZE, SIZE)) * 4000).astype(np.uint16)


def _tiff_truncated(target: Path) -> None:
    raw = tiff_bytes(_pixels())
    target.write_bytes(raw[: len(raw) // 2])


def _tiff_corrupt(target: Path) -> None:
    # a valid header and IFD whose zlib stream is garbage
    raw = bytearray(tiff_bytes(_pixels()))
    start = raw.find(zlib.compress(_pixels()[0].tobytes())[:2])
    for i in range(max(start, 16), min(max(start, 16) + 64, len(raw))):
        raw[i] ^= 0x5A
    target.write_bytes(bytes(raw))


def _tiff_raw_truncated(target: Path) -> None:
    raw = tiff_bytes(_pixels(), compression=None)
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
    good_images(tmp)
    path.write_text(
        "image_id,dataset,file,channel_names\ngood0,d,good0.tif,DAPI;Actin\ngood1,d,good1.tif,DAPI,x,y\n"
    )
    return path


def _manifest_parquet_garbage(tmp: Path) -> Path:
    path = tmp / "manifest.parquet"
    path.write_bytes(b"PAR1" + _garbage(b"") + b"PAR1")
    return path


def _manifest_no_column(tmp: Path) -> Path:
    rows = good_images(tmp)
    path = tmp / "manifest.csv"
    pd.DataFrame(rows).drop(columns=["channel_names"]).to_csv(path, index=False)
    return path


def _manifest_missing(tmp: Path) -> Path:
    return tmp / "no_such_manifest.csv"


def _dup_ids(tmp: Path) -> Path:
    rows = good_images(tmp)
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


# ------------------------------------------------------------------- issue 26: inputs that hang, folders
def _fifo(target: Path) -> None:
    os.mkfifo(target)  # opening it for reading would block until a writer comes: forever


def _socket(target: Path) -> None:
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(target))
    sock.close()  # the socket file stays


def _dup_column(tmp: Path) -> Path:
    """A header naming ``file`` twice: pandas would read the second copy as ``file.1`` and ignore it."""
    good_images(tmp)
    path = tmp / "manifest.csv"
    path.write_text("image_id,dataset,file,channel_names,label,file\n"
                    + "".join(f"good{i},d,good{i}.tif,{GOOD_NAMES},x,good{(i + 1) % 3}.tif\n" for i in range(3)))  # fmt: skip
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
        return [
            "embed",
            "--model",
            "chada_vit_test",
            "--manifest",
            str(path),
            "--out",
            str(out / "e.npz"),
            "--quiet",
        ]
    if command == "embed-folder":  # the model folder a model_folder_case builder wrote beside the manifest
        return ["embed", "--model", str(path.parent / "model"), "--manifest", str(path), "--out", str(out / "e.npz"),
                "--quiet"]  # fmt: skip
    if command == "embed-workers":
        return ["embed", "--model", "chada_vit_test", "--manifest", str(path), "--out", str(out / "e.npz"),
                "--quiet", "--workers", "1", "--batch-size", "1"]  # fmt: skip
    if command == "features":
        return [
            "features",
            "--manifest",
            str(path),
            "--kind",
            "shortcut",
            "--out",
            str(out / "f.npz"),
            "--quiet",
        ]
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
    Case("tiff-truncated", write_case("bad.tif", _tiff_truncated), READERS + ("pretrain", "embed-workers"),
         needles=(BAD_ID, "bad.tif")),
    Case("tiff-corrupt-zlib", write_case("bad.tif", _tiff_corrupt), needles=(BAD_ID, "bad.tif")),
    Case("tiff-uncompressed-truncated", write_case("bad.tif", _tiff_raw_truncated), needles=(BAD_ID, "bad.tif")),
    Case("tiff-garbage", write_case("bad.tif", _garbage(b"II*\x00")), needles=(BAD_ID, "bad.tif")),
    Case("tiff-empty-file", write_case("bad.tif", b""), needles=(BAD_ID, "bad.tif")),
    Case("png-truncated", write_case("bad.png", _png_truncated), needles=(BAD_ID, "bad.png")),
    Case("png-garbage", write_case("bad.png", _garbage(b"\x89PNG\r\n\x1a\n")), needles=(BAD_ID, "bad.png")),
    Case("jpeg-is-text", write_case("bad.jpg", b"hello, I am not a JPEG\n"), needles=(BAD_ID, "bad.jpg")),
    Case("zarr-garbage-chunk", write_case("bad.zarr", lambda t: _zarr_chunk(t, "garbage")),
         READERS + ("pretrain-workers",), needles=(BAD_ID, "bad.zarr")),
    Case("zarr-missing-chunk", write_case("bad.zarr", lambda t: _zarr_chunk(t, "missing")),
         needles=(BAD_ID, "bad.zarr", "missing")),
    Case("zarr-bad-metadata", write_case("bad.zarr", _zarr_bad_meta), needles=(BAD_ID, "bad.zarr")),
    Case("zarr-empty-folder", write_case("bad.zarr", _mkdir), needles=(BAD_ID, "bad.zarr")),
    Case("npy-garbage", write_case("bad.npy", _garbage(b"\x93NUMPY")), needles=(BAD_ID, "bad.npy")),
    Case("directory-as-image", write_case("bad.tif", _mkdir), needles=(BAD_ID, "bad.tif", "directory")),
    Case("missing-image", write_case("bad.tif", _no_file), READERS + ("pretrain",), needles=(BAD_ID, "bad.tif")),
    Case("unsupported-suffix", write_case("bad.bmp", b"BM"), needles=(BAD_ID, "bad.bmp")),
    # --- pixel values and channel counts
    Case("nan-pixel", write_case("bad.tif", tif_case(_with_nonfinite(np.nan))), READERS + ("pretrain",),
         needles=(BAD_ID, "bad.tif", "channel 1", "'Actin'", "NaN")),
    Case("inf-pixel", write_case("bad.npy", _npy(_with_nonfinite(np.inf))), needles=(BAD_ID, "bad.npy", "'Actin'", "inf")),
    Case("zero-channels", write_case("bad.npy", _npy(np.zeros((0, SIZE, SIZE), np.float32)), names=""),
         needles=(BAD_ID,)),
    Case("eleven-channels", write_case("bad.tif", tif_case(_pixels(11)), names=";".join(f"c{i}" for i in range(11))),
         ("check", "embed", "features"), needles=(BAD_ID, "11"),
         needles_by_command={"embed": (BAD_ID, "11 channels", "C_max=10")}),
    Case("channel-name-count", write_case("bad.tif", tif_case(_pixels(2)), names="DAPI"), READERS + ("pretrain",),
         needles=(BAD_ID,)),
    Case("duplicate-stains", write_case("bad.tif", tif_case(_pixels(2)), names="DAPI;dapi"), READERS + ("pretrain",),
         needles=(BAD_ID, "appears twice")),
    Case("zero-channels-pretrain", write_case("bad.npy", _npy(np.zeros((0, SIZE, SIZE), np.float32)), names=""),
         ("pretrain",), needles=(BAD_ID, "empty")),
    # --- manifests
    Case("manifest-header-only", _header_only, READERS + ("pretrain",), needles=("0 images",)),
    Case("manifest-is-directory", _manifest_dir, READERS + ("pretrain",), needles=("manifest.csv", "directory")),
    Case("manifest-missing", _manifest_missing, READERS, needles=("no_such_manifest.csv",)),
    Case("manifest-binary-garbage", _manifest_garbage, READERS, needles=("manifest.csv",)),
    Case("manifest-ragged-rows", _manifest_ragged, READERS, needles=("manifest.csv", "line 3")),
    Case("manifest-parquet-garbage", _manifest_parquet_garbage, READERS, needles=("manifest.parquet",)),
    Case("manifest-missing-column", _manifest_no_column, READERS, needles=("channel_names",)),
    Case("duplicate-image-ids", _dup_ids, ("check", "embed", "features"), needles=("good0", "row 1", "row 4"),
         needles_by_command={"embed": ("good0", "rows 1, 4"), "features": ("good0", "rows 1, 4")}),
    # --- configs
    Case("yaml-syntax", _yaml("optim:\n  lr: [1, 2\n  epochs: 3\n"), ("pretrain-config", "evaluate-config"),
         needles=("config.yaml", "YAML", "line 3")),
    Case("yaml-not-a-mapping", _yaml("- just\n- a list\n"), ("pretrain-config",), needles=("config",)),
    Case("config-is-directory", _config_dir, ("pretrain-config", "evaluate-config"), needles=("config.yaml",)),
    # --- issue 26: special files, patches, header columns (the FIFO would hang without the fix)
    Case("fifo-as-image", write_case("bad.tif", _fifo), READERS + ("embed-workers",), needles=(BAD_ID, "bad.tif", "FIFO")),
    Case("socket-as-image", write_case("bad.png", _socket), needles=(BAD_ID, "bad.png", "socket")),
    Case("image-smaller-than-a-patch", write_case("bad.tif", tif_case(_pixels(2)[:, :4, :4])), ("check", "embed"),
         needles=(BAD_ID, "bad.tif", "patch")),
    Case("image-not-a-multiple-of-the-patch", write_case("bad.tif", tif_case(np.zeros((2, 20, 20), np.uint16))), ("embed",),
         needles=(BAD_ID, "bad.tif", "20x20", "--image-size")),
    Case("manifest-is-a-fifo", lambda tmp: (os.mkfifo(tmp / "manifest.csv"), tmp / "manifest.csv")[1], READERS,
         needles=("manifest.csv", "not a regular file")),
    Case("column-twice-in-header", _dup_column, READERS + ("pretrain",), needles=("manifest.csv", "'file'", "twice")),
    # --- issue 26: a model folder from elsewhere (config.json values, weights' dtype)
    Case("config-embed-dim-float", model_folder_case({"embed_dim": 1e9}), ("embed-folder",),
         needles=("config.json", "embed_dim")),
    Case("config-embed-dim-huge", model_folder_case({"embed_dim": 10**9, "num_heads": 1}), ("embed-folder",),
         needles=("config.json", "memory")),
    Case("config-negative-size", model_folder_case({"img_size": -32}), ("embed-folder",), needles=("config.json", "img_size")),
    Case("config-zero-heads", model_folder_case({"num_heads": 0}), ("embed-folder",), needles=("config.json", "num_heads")),
    Case("config-zero-patch", model_folder_case({"patch_size": 0}), ("embed-folder",), needles=("config.json", "patch_size")),
    Case("config-depth-million", model_folder_case({"depth": 10**6, "embed_dim": 1024}), ("embed-folder",),
         needles=("config.json", "memory")),
    Case("config-heads-do-not-divide", model_folder_case({"num_heads": 3}), ("embed-folder",),
         needles=("config.json", "num_heads")),
    Case("config-bool-is-a-number", model_folder_case({"qkv_bias": 1}), ("embed-folder",), needles=("config.json", "qkv_bias")),
    Case("config-image-size-big", model_folder_case(extra={"image_size": "big"}), ("embed-folder",),
         needles=("config.json", "image_size", "'big'")),
    Case("config-global-size-big", model_folder_case(extra={"pretrain_config": {"augment": {"global_size": "big"}}}),
         ("embed-folder",), needles=("config.json", "global_size", "'big'")),
    Case("weights-int32", model_folder_case(weights="int32"), ("embed-folder",),
         needles=("model.safetensors", "int32", "not floating point")),
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
    path = write_case("bad.tif", tif_case(_with_nonfinite(np.nan)))(tmp_path)
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
    path = bad_manifest(tmp_path, "good0.tif")
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
    path = bad_manifest(tmp_path, "good0.tif")
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
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_real_console_script_on_a_truncated_tiff_with_workers(tmp_path):
    path = write_case("bad.tif", _tiff_truncated)(tmp_path)
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


# ------------------------------------------------------------------------------------------ outputs
class WorkStarted(BaseException):
    """Raised by every entry point of real work: an output check must refuse the run before any of them.

    A BaseException, so the CLI's error policy does not turn it into an exit code."""


_WORK = (
    "chada.encode.encoders.resolve_model", "chada.data.dataset.ManifestDataset.__init__",
    "chada.encode.embed.embed_manifest", "chada.encode.store.load_embeddings", "chada.viz.projection.project",
    "chada.cli.attention.load_image", "chada.tasks.evaluation.run_evaluation", "chada.ssl.trainer.Trainer.__init__",
    "chada.pipeline.quickstart.run_quickstart", "chada.models.convert.load_official_checkpoint",
    "chada.data.synth.generate", "chada.data.shards.write_shards", "chada.data.importers.import_dataset",
    "chada.data.corpus.build_corpus", "chada.cli.data.summarize_manifest",
    "chada.tasks.channel_subsets.run_channel_subsets", "chada.tasks.chammi.embed_chammi",
)  # fmt: skip


@pytest.fixture(scope="session")
def _chada_imported() -> None:
    """Every chada module imported once, before any patch: a module first imported while ``no_work`` is
    active would bind the patched function by ``from X import f`` and keep it for later tests."""
    import importlib
    import pkgutil

    import chada

    for mod in pkgutil.walk_packages(chada.__path__, "chada."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)


@pytest.fixture()
def no_work(monkeypatch, _chada_imported):
    def started(*args, **kwargs):
        raise WorkStarted

    for target in _WORK:
        monkeypatch.setattr(target, started)


# name -> (what the output is, its suffix, argv for an output path); inputs need not exist: the output
# is checked before any input is read.
WRITERS: dict[str, tuple[str, str, Callable[[Path, str], list[str]]]] = {
    "embed": ("file", ".npz", lambda t, o: ["embed", "--model", "chada_vit_test", "--manifest", str(t / "m.csv"),
                                            "--out", o]),
    "features": ("file", ".npz", lambda t, o: ["features", "--kind", "handmade", "--manifest", str(t / "m.csv"),
                                               "--out", o]),
    "attention": ("file", ".png", lambda t, o: ["attention", "--model", "chada_vit_test", "--image",
                                                str(t / "i.tif"), "--out", o]),
    "project": ("file", ".png", lambda t, o: ["project", "--embeddings", str(t / "e.npz"), "--out", o]),
    "data-summary": ("file", ".png", lambda t, o: ["data", "summary", str(t / "m.csv"), "--plot", o]),
    "evaluate": ("dir", "", lambda t, o: ["evaluate", "--embeddings", str(t / "e.npz"), "--label-column", "label",
                                          "--out", o]),
    "subsets": ("dir", "", lambda t, o: ["subsets", "--manifest", str(t / "m.csv"), "--models",
                                         "a=chada_vit_test", "--out", o]),
    "pretrain": ("dir", "", lambda t, o: ["pretrain", *_tiny_pretrain(t / "m.csv", Path(o))]),
    "quickstart": ("dir", "", lambda t, o: ["quickstart", "--out", o]),
    "convert": ("dir", "", lambda t, o: ["convert", str(t / "ckpt.pth"), o]),
    "data-synth": ("dir", "", lambda t, o: ["data", "synth", o]),
    "data-shard": ("dir", "", lambda t, o: ["data", "shard", str(t / "m.csv"), o]),
    "data-import": ("dir", "", lambda t, o: ["data", "import", "bloodmnist", str(t / "src.npz"), o]),
    "data-build-corpus": ("dir", "", lambda t, o: ["data", "build-corpus", "--sources", str(t / "m.csv"),
                                                   "--per-source", "2", "--out", o]),
    "benchmark-chammi": ("dir", "", lambda t, o: ["benchmark", "chammi", "--model", "chada_vit_test", "--root",
                                                  str(t / "chammi"), "--out", o]),
}  # fmt: skip


def _refused(argv: list[str], capfd, *needles: str) -> None:
    rc = main(argv)
    out, err = capfd.readouterr()
    assert rc == 2, out + err
    assert "Traceback" not in out + err
    for needle in needles:
        assert needle in err, (needle, err)
    lines = err.splitlines()
    first = next(i for i, ln in enumerate(lines) if ": error: " in ln)
    assert len(lines) - first <= 2, err


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_output_of_the_wrong_kind_is_refused_before_any_work(name, tmp_path, capfd, no_work):
    kind, suffix, argv = WRITERS[name]
    out = tmp_path / f"out{suffix}"
    if kind == "file":  # --out names a folder where a file is expected
        out.mkdir()
        _refused(argv(tmp_path, str(out)), capfd, str(out), "is a folder")
    else:  # the output folder is a file
        out.write_text("not a folder")
        _refused(argv(tmp_path, str(out)), capfd, str(out), "is a file")


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_output_under_a_file_is_refused(name, tmp_path, capfd, no_work):
    kind, suffix, argv = WRITERS[name]
    (tmp_path / "plain.txt").write_text("x")
    out = tmp_path / "plain.txt" / "sub" / f"out{suffix}"
    _refused(argv(tmp_path, str(out)), capfd, str(out), "plain.txt is a file, not a folder")


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_read_only_output_location_is_refused(name, tmp_path, capfd, no_work, monkeypatch):
    import chada.io.outputs as cio

    # This test may run as root, for whom every folder is writable: the permission answer is faked
    # here for one folder; test_read_only_folder_for_real checks the real answer.
    ro = tmp_path / "ro"
    ro.mkdir()
    real = cio._writable
    monkeypatch.setattr(cio, "_writable", lambda folder: folder != ro.absolute() and real(folder))
    kind, suffix, argv = WRITERS[name]
    out = ro / f"out{suffix}"
    _refused(argv(tmp_path, str(out)), capfd, str(out), "read-only")


def test_read_only_folder_for_real(tmp_path):
    manifest = bad_manifest(tmp_path, "good0.tif")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = run_without_override(["embed", "--model", "chada_vit_test", "--manifest", str(manifest), "--out",
                                      str(ro / "e.npz"), "--quiet"], cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert (
            "Traceback" not in proc.stderr and "read-only" in proc.stderr and str(ro / "e.npz") in proc.stderr
        )
        proc = run_without_override(["data", "synth", str(ro / "synth"), "--n-per-assay", "1"], cwd=tmp_path)
        assert proc.returncode == 2 and "read-only" in proc.stderr and str(ro / "synth") in proc.stderr, (
            proc.stderr
        )
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------ kill -9 and resume of embed
_KILL_SCRIPT = """
import os, signal, sys
import chada.encode.embed as E
import chada.io.atomic as cio
from chada.cli import main

calls = {"n": 0}
real = E._embed_samples

def fsync_then_die(fd):
    os.kill(os.getpid(), signal.SIGKILL)

def embed_then_arm(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == int(os.environ["CHADA_TEST_KILL_AT"]):
        # die inside the next atomic write: that chunk's temporary file stays behind
        cio.os.fsync = fsync_then_die
    return real(*args, **kwargs)

E._embed_samples = embed_then_arm
sys.exit(main(sys.argv[1:]))
"""
N_RESUME = 8  # images; batch 2, one batch per chunk: 4 chunks, killed while writing the third


def _embed_argv(manifest: Path, out: Path) -> list[str]:
    return ["embed", "--model", "chada_vit_test", "--manifest", str(manifest), "--out", str(out), "--quiet",
            "--batch-size", "2", "--chunk-batches", "1"]  # fmt: skip


def _tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def _restore(folder: Path, saved: dict[str, tuple[bytes, int]]) -> None:
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    for name, (data, mtime) in saved.items():
        (folder / name).write_bytes(data)
        os.utime(folder / name, ns=(mtime, mtime))


@pytest.fixture(scope="module")
def killed_embed(tmp_path_factory):
    """A manifest of 8 images and an embed run killed (SIGKILL) in the middle of writing chunk 2."""
    tmp = tmp_path_factory.mktemp("resume")
    rows = []
    for i in range(N_RESUME):
        arr = (np.random.default_rng(i).random((2, SIZE, SIZE)) * 4000).astype(np.uint16)
        tifffile.imwrite(tmp / f"im{i}.tif", arr, photometric="minisblack", metadata={"axes": "CYX"})
        rows.append(dict(image_id=f"im{i}", dataset="d", file=f"im{i}.tif", channel_names=GOOD_NAMES))
    manifest = tmp / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp / "out" / "e.npz"
    env = {k: v for k, v in os.environ.items() if k != "CHADA_DEBUG"} | {"CHADA_TEST_KILL_AT": "3"}
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, *_embed_argv(manifest, out)], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    parts = out.parent / "e.npz.parts"
    names = sorted(p.name for p in parts.iterdir())
    assert [n for n in names if n.startswith("chunk_")] == ["chunk_000000.npz", "chunk_000001.npz"], names
    assert [n for n in names if n.startswith(".chunk_000002.npz.") and n.endswith(".tmp")], names
    state = {"images": _tree(tmp), "parts": _tree(parts)}
    return tmp, manifest, out, state


@pytest.fixture()
def resume_case(killed_embed):
    """The killed run's files as they were left (images, manifest, parts), restored for each test."""
    tmp, manifest, out, state = killed_embed
    for name, (data, mtime) in state["images"].items():
        (tmp / name).write_bytes(data)
        os.utime(tmp / name, ns=(mtime, mtime))
    _restore(out.parent / "e.npz.parts", state["parts"])
    if out.exists():
        out.unlink()
    return manifest, out


def _features(path: Path) -> dict[str, np.ndarray]:
    from chada.encode.store import load_embeddings

    return load_embeddings(path).features


def _assert_bit_identical(a: Path, b: Path) -> None:
    fa, fb = _features(a), _features(b)
    assert sorted(fa) == sorted(fb)
    for pool in fa:
        assert np.array_equal(fa[pool], fb[pool]), pool


def _fresh(manifest: Path, where: Path) -> Path:
    out = where / "fresh.npz"
    assert main([*_embed_argv(manifest, out), "--no-resume"]) == 0
    return out


def test_resume_after_kill_is_bit_identical_and_cleans_the_temp_file(resume_case, tmp_path, caplog):
    manifest, out = resume_case
    with caplog.at_level("INFO"):
        assert main(_embed_argv(manifest, out)) == 0
    assert "resuming: 2 of 4 chunks" in caplog.text
    _assert_bit_identical(out, _fresh(manifest, tmp_path))
    assert not (out.parent / "e.npz.parts").exists()
    assert not [p for p in out.parent.rglob("*.tmp")]


def test_resume_after_kill_with_changed_inputs_recomputes_them(resume_case, tmp_path, caplog):
    manifest, out = resume_case
    stale = _features(_fresh(manifest, tmp_path))  # what the finished chunks hold
    # im0 (chunk 0, finished) gets new pixels; row 3 (im3, chunk 1, finished) now points at another file
    new = (np.random.default_rng(99).random((2, SIZE, SIZE)) * 4000).astype(np.uint16)
    tifffile.imwrite(manifest.parent / "im0.tif", new, photometric="minisblack", metadata={"axes": "CYX"})
    tifffile.imwrite(manifest.parent / "other.tif", new[::-1].copy(), photometric="minisblack",
                     metadata={"axes": "CYX"})  # fmt: skip
    frame = pd.read_csv(manifest)
    frame.loc[3, "file"] = "other.tif"
    frame.to_csv(manifest, index=False)
    try:
        with caplog.at_level("INFO"):
            assert main(_embed_argv(manifest, out)) == 0
        assert "2 image(s) read other or changed files" in caplog.text and "'im0', 'im3'" in caplog.text
        _assert_bit_identical(out, _fresh(manifest, tmp_path / "again"))
        resumed = _features(out)
        assert not np.array_equal(resumed["cls"][0], stale["cls"][0])  # the test can see a stale row
        assert np.array_equal(resumed["cls"][[1, 2, 4, 5, 6, 7]], stale["cls"][[1, 2, 4, 5, 6, 7]])
    finally:
        frame.loc[3, "file"] = "im3.tif"
        frame.to_csv(manifest, index=False)


def _tamper(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # a valid archive whose features were edited (the digest still describes the old ones)
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["feat_cls"] = arrays["feat_cls"] + 1.0
        if how == "other-rows":
            arrays = {k: z for k, z in arrays.items()} | {"rows": arrays["rows"] + 2}
        np.savez(path, **arrays)


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "edited-features", "other-rows"])
def test_tampered_part_file_is_recomputed(resume_case, tmp_path, caplog, how):
    manifest, out = resume_case
    _tamper(out.parent / "e.npz.parts" / "chunk_000000.npz", how)
    with caplog.at_level("INFO"):
        assert main(_embed_argv(manifest, out)) == 0
    assert "recomputing chunk 0" in caplog.text
    _assert_bit_identical(out, _fresh(manifest, tmp_path))
