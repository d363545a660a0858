"""Atomic file writes, the bottom layer every other package writes its outputs through.

A reader (a resumed run, a second process, a user opening the file) must never see half a file, so
every output is written to a temporary file in the destination's folder, flushed to disk, then
renamed over the destination (``os.replace`` is atomic within one file system).

    atomic_write_bytes(path, data)             # any bytes
    atomic_write_text(path, text)              # UTF-8 text
    atomic_write_json(path, obj, indent=2)     # json.dumps(obj, **kwargs) as UTF-8
    atomic_write_npz(path, feat_cls=x, ...)    # numpy.savez of the named arrays
    atomic_write_npy(path, array)              # numpy.save of one array (no pickles)

This module imports nothing from chada, so any layer may use it.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_npy", "atomic_write_npz", "atomic_write_text"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` encoded as UTF-8, written atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, newline: bool = False, **dumps_kwargs: Any) -> None:
    """``json.dumps(obj, **dumps_kwargs)`` (plus ``"\\n"`` with ``newline``), written atomically."""
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + ("\n" if newline else ""))


def atomic_write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez(path, **arrays)`` (uncompressed), written atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_npy(path: str | os.PathLike, array: Any) -> None:
    """``numpy.save(path, array, allow_pickle=False)``, written atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
