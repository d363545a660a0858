"""Output checks before any work starts: :func:`check_writable_file` (``--out x.npz``) and
:func:`check_writable_dir` (``--out results/``) refuse a folder where a file is expected (or the
reverse), a parent that is a file, and a read-only location, each with a one-line message naming the
path; both also clean stale temporary files of that output. They raise the built-in
``IsADirectoryError`` / ``NotADirectoryError`` / ``PermissionError`` (bad input, exit code 2 in
:mod:`chada.errors`)."""

from __future__ import annotations

import os
from pathlib import Path

from chada.io.atomic import remove_stale_temps

# How deep check_writable_dir looks for stale temporary files below an output folder (the quickstart
# writes at most three levels down: embeddings/<group>/<model>.npz.parts/chunk_*.npz).
_CLEAN_DEPTH = 4


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(folder: Path) -> bool:
    """Whether this process may create files in ``folder`` (also false on a read-only file system)."""
    return os.access(folder, os.W_OK | os.X_OK)


def _check_ancestor(path: Path, what: str, start: Path | None = None) -> None:
    """``path`` can be created: its nearest existing ancestor (from ``start``, default ``path``) is a
    writable folder."""
    anc = _existing_ancestor(path if start is None else start)
    if not anc.is_dir():
        raise NotADirectoryError(f"cannot create {what} {path}: {anc} is a file, not a folder")
    if not _writable(anc):
        raise PermissionError(
            f"cannot write {what} {path}: {anc} is read-only (no write permission); choose another location"
        )


def check_writable_file(path: str | os.PathLike, *, what: str = "output file", clean: bool = True) -> Path:
    """Refuse an output file path that cannot be written, before any work starts.

    Refused (one-line message naming the path): ``path`` is an existing folder, one of its parents is a
    file, or the nearest existing parent is not writable. With ``clean``, stale temporary files of
    ``path`` left by a killed run are removed (:func:`remove_stale_temps`).

    Raises:
        IsADirectoryError, NotADirectoryError, PermissionError.
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(
            f"{what} {p} is a folder; give a file path (for example {p / ('out' + (p.suffix or ''))})"
        )
    _check_ancestor(p, what, start=p.parent)  # os.replace needs the folder writable, not the old file
    if clean and p.parent.is_dir():
        remove_stale_temps(p.parent, p.name)
    return p


def check_writable_dir(path: str | os.PathLike, *, what: str = "output folder", clean: bool = True) -> Path:
    """Refuse an output folder that cannot be created or written, before any work starts.

    Refused (one-line message naming the path): ``path`` is an existing file, one of its parents is a
    file, or the folder (or its nearest existing parent) is not writable. With ``clean``, stale
    temporary files anywhere up to four levels below the folder are removed
    (:func:`remove_stale_temps`).

    Raises:
        NotADirectoryError, PermissionError.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{what} {p} is a file; give a folder")
    _check_ancestor(p, what)
    if clean and p.is_dir():
        remove_stale_temps(p, depth=_CLEAN_DEPTH)
    return p


def safe_filename(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.`` replaced by ``_`` (task and
    model names become file names)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
