"""Completion markers: ``<folder>/DONE.json`` is written last and lists every file of the run with
its size and SHA-256, so an interrupted run, or a second run that wrote into the folder, reads as
unfinished (docs/trust.md)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chada.io.atomic import _recorders, atomic_write_json, naming_path

DONE_NAME = "DONE.json"


class UnfinishedFolderError(ValueError):
    """A run's folder without its completion marker, or changed after it (bad input: exit code 2)."""


def _digest(path: Path) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@contextlib.contextmanager
def finishing(folder: str | os.PathLike, **info: Any) -> Iterator[set[Path]]:
    """Write a run's files in the block; ``<folder>/DONE.json`` is written last, when it ends without
    an error.

    The old marker is removed first, so an interrupted rewrite reads as unfinished. ``DONE.json`` lists
    every file the block wrote through this module (add others to the yielded set) with its size and
    SHA-256, plus ``info``. Files the previous marker listed and this run did not write are removed:
    the folder's results, report and figures come from one run.
    """
    folder = Path(folder)
    marker = folder / DONE_NAME
    try:
        previous = json.loads(marker.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        previous = {}
    with contextlib.suppress(FileNotFoundError), naming_path(marker):
        marker.unlink()
    written: set[Path] = set()
    _recorders.append(written)
    try:
        yield written
    finally:
        _recorders.remove(written)
    root = folder.absolute()
    files = [p for p in sorted(written) if p.is_relative_to(root) and p.is_file()]
    for rel in set(previous) - {p.relative_to(root).as_posix() for p in files}:
        stale = (root / str(rel)).resolve()
        if stale.is_relative_to(root.resolve()):  # a marker from elsewhere must not reach outside the folder
            with contextlib.suppress(OSError):
                stale.unlink()
    mark_finished(folder, files, **info)


def mark_finished(folder: str | os.PathLike, files: list[Path], **info: Any) -> Path:
    """Write ``<folder>/DONE.json`` listing ``files`` (below ``folder``) with size and SHA-256, and
    ``info``; call it after the last of them is written. Returns the marker's path."""
    root = Path(folder).absolute()
    listing = {}
    for p in files:
        p = Path(p).absolute()
        listing[p.relative_to(root).as_posix()] = {"bytes": p.stat().st_size, "sha256": _digest(p)}
    marker = root / DONE_NAME
    atomic_write_json(marker, {"finished": time.time(), **info, "files": listing}, indent=1, default=str)
    return marker


def check_finished(folder: str | os.PathLike, what: str = "run folder", rerun: str = "") -> dict[str, Any]:
    """The ``DONE.json`` of ``folder`` (:func:`finishing`); refuses a folder without one, or whose listed
    files are missing or changed since (an interrupted run, or a second run that wrote into it).

    Raises:
        UnfinishedFolderError: naming the folder, the file and ``rerun`` (what to do).
    """
    folder = Path(folder)
    todo = f"; {rerun}" if rerun else ""
    try:
        done = json.loads((folder / DONE_NAME).read_text())
        files = dict(done["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UnfinishedFolderError(
            f"{folder}: not a finished {what} (no readable {DONE_NAME}: interrupted, or still being written){todo}"
        ) from None
    for rel, meta in files.items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != meta.get("bytes") or _digest(p) != meta.get("sha256"):
            raise UnfinishedFolderError(
                f"{folder}: {rel} changed after the {what} finished (another run wrote into it?){todo}"
            )
    return done
