"""The fuzz suites' builders: a manifest of good images plus one bad row, its writers, a model folder
edited on purpose, and a ``chada`` process without root's permission override
(tests/crosscutting/fuzz/test_inputs.py and test_hostile.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

BAD_ID = "bad-7"  # the image id of the one bad row
SIZE = 16
GOOD_NAMES = "DAPI;Actin"


def good_images(tmp: Path, n: int = 3) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        arr = (rng.random((2, SIZE, SIZE)) * 4000).astype(np.uint16)
        tifffile.imwrite(tmp / f"good{i}.tif", arr, photometric="minisblack", metadata={"axes": "CYX"})
        rows.append(dict(image_id=f"good{i}", dataset="d", file=f"good{i}.tif", channel_names=GOOD_NAMES))
    return rows


def bad_manifest(tmp: Path, bad_file: str, names: str = GOOD_NAMES, extra: list[dict] | None = None) -> Path:
    rows = good_images(tmp)
    rows.append(dict(image_id=BAD_ID, dataset="d", file=bad_file, channel_names=names))
    rows += extra or []
    path = tmp / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tiff_bytes(arr: np.ndarray, compression: str | None = "zlib") -> bytes:
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="minisblack", metadata={"axes": "CYX"}, compression=compression)
    return buf.getvalue()


def write_case(
    name: str, data: bytes | Callable[[Path], None], names: str = GOOD_NAMES
) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        target = tmp / name
        if callable(data):
            data(target)
        else:
            target.write_bytes(data)
        return bad_manifest(tmp, name, names)

    return build


def tif_case(arr: np.ndarray) -> Callable[[Path], None]:
    def write(target: Path) -> None:
        target.write_bytes(tiff_bytes(arr))

    return write


def model_folder_case(config: dict | None = None, extra: dict | None = None, weights: str | None = None):
    """A good manifest, and beside it ``model/``: chada_vit_test saved, then its config.json edited
    (``config`` / ``extra`` values replaced) or its weights rewritten as ``weights`` (a dtype name)."""

    def build(tmp: Path) -> Path:
        import json

        import torch
        from safetensors.torch import load_file, save_file

        from chada.models.hub import save_pretrained
        from chada.models.registry import create_model

        folder = save_pretrained(create_model("chada_vit_test"), tmp / "model", extra={"image_size": SIZE})
        meta = json.loads((folder / "config.json").read_text())
        meta["config"].update(config or {})
        meta["extra"].update(extra or {})
        (folder / "config.json").write_text(json.dumps(meta))
        if weights:
            state = load_file(str(folder / "model.safetensors"))
            save_file(
                {k: (v * 100).to(getattr(torch, weights)) for k, v in state.items()},
                str(folder / "model.safetensors"),
            )
        return bad_manifest(tmp, "good0.tif")

    return build


def _drop_permission_override() -> None:  # pragma: no cover - runs in the child before exec
    """Drop CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from the bounding set: root's exec'd
    process then obeys file modes like any user (prctl PR_CAPBSET_DROP = 24)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            os._exit(97)


def run_without_override(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``chada ARGS`` in a process that cannot write where file modes forbid it, even as root."""
    code = "import sys; from chada.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if k != "CHADA_DEBUG"}
    pre = _drop_permission_override if os.geteuid() == 0 else None
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120, preexec_fn=pre)  # fmt: skip
    if proc.returncode == 97:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE here")
    return proc
