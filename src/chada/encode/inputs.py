"""What an embedding run's result depends on, besides its settings: the input files, the ids, the weights.

:func:`row_signatures` gives each manifest row one short signature of its files;
:func:`refuse_duplicate_ids` refuses a manifest whose rows share an image id (rows of the output are
found by id later); :func:`weights_digest` identifies a model's weights.

A resumed run reuses a finished chunk only when every row of it still has the signature it had when
the chunk was written (:class:`chada.encode.chunks.ChunkStore`). A row's signature covers, for every
file the row reads (``file`` or each of ``channel_files``; every file inside an OME-Zarr folder):

- ``verify="stat"`` (default): the absolute path, the size in bytes and the modification time (ns).
  Cheap (one ``stat`` per file). Misses an edit that keeps both size and mtime, which a normal write
  does not.
- ``verify="hash"``: the absolute path and the SHA-256 of the content. Reads every byte once.

A row whose files are missing or unnamed gets a signature that says so; the reader then reports the
problem with the image id when the row is read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["VERIFY_CHOICES", "refuse_duplicate_ids", "row_signature", "row_signatures", "weights_digest", "weights_sha1"]

VERIFY_CHOICES = ("stat", "hash")
_BLOCK = 1 << 20


def _files(path: Path) -> Iterable[Path]:
    """``path``, or every file below it (sorted) when it is a folder (OME-Zarr)."""
    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                yield Path(folder) / name
    else:
        yield path


def _file_line(path: Path, verify: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}\tunreadable:{type(exc).__name__}"
    if verify == "stat":
        return f"{path}\t{st.st_size}\t{st.st_mtime_ns}"
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever: the reader refuses it by name
        return f"{path}\tnot-a-regular-file"
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                h.update(block)
    except OSError as exc:
        return f"{path}\tunreadable:{type(exc).__name__}"
    return f"{path}\t{st.st_size}\t{h.hexdigest()}"


def row_signature(row: dict[str, Any], root: str | os.PathLike, verify: str = "stat") -> str:
    """A 16-hex-digit signature of the files one manifest row reads (see the module docstring)."""
    from chada.data.manifest import row_paths

    if verify not in VERIFY_CHOICES:
        raise ValueError(f"verify must be one of {VERIFY_CHOICES}, got {verify!r}")
    try:
        _, paths = row_paths(row, root)
    except ValueError as exc:
        text = f"invalid:{exc}"
    else:
        lines = []
        for p in paths:
            p = Path(os.path.abspath(p))
            lines += [_file_line(f, verify) for f in _files(p)] or [f"{p}\tempty folder"]
        text = "\n".join(lines)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def row_signatures(
    rows: Sequence[dict[str, Any]], root: str | os.PathLike, verify: str = "stat", progress: bool = False
) -> list[str]:
    """:func:`row_signature` of every row, in order (a progress bar with ``progress``)."""
    if verify not in VERIFY_CHOICES:
        raise ValueError(f"verify must be one of {VERIFY_CHOICES}, got {verify!r}")
    it: Iterable[dict[str, Any]] = rows
    if progress and verify == "hash":
        from tqdm.auto import tqdm

        it = tqdm(rows, desc="hashing input files", unit="img")
    return [row_signature(r, root, verify) for r in it]


def refuse_duplicate_ids(frame: pd.DataFrame, manifest: str | os.PathLike | pd.DataFrame) -> None:
    """An input error naming each repeated image id and the manifest rows (1 = first data row) holding it."""
    ids = frame["image_id"].astype(str)
    repeated = list(dict.fromkeys(ids[ids.duplicated()]))
    if not repeated:
        return
    from chada.data.manifest import load_manifest
    from chada.errors import InputError

    full = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest)
    all_ids = full["image_id"].astype(str).to_numpy()
    parts = [
        f"{iid!r} on rows {', '.join(str(int(i) + 1) for i in np.flatnonzero(all_ids == iid))}" for iid in repeated[:5]
    ]
    more = f" and {len(repeated) - 5} more ids" if len(repeated) > 5 else ""
    where = "the manifest" if isinstance(manifest, pd.DataFrame) else str(manifest)
    raise InputError(
        f"duplicate image ids in {where}: {'; '.join(parts)}{more}. Every image needs its own image_id "
        "(`chada data check` lists every problem)"
    )


def weights_digest(module: Any) -> str:
    """SHA-256 of every tensor of ``state_dict`` (names, dtypes, shapes and bytes)."""
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weights_sha1(module: Any) -> str:
    """SHA-1 of the model's weights (names, dtypes, shapes, bytes): which exact model a probe was fit on."""
    import torch

    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
