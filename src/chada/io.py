"""Atomic file writes and output checks, the bottom layer every other package writes through.

A reader (a resumed run, a second process, a user opening the file) must never see half a file, so
every output is written to a temporary file in the destination's folder, flushed to disk, then
renamed over the destination (``os.replace`` is atomic within one file system).

    atomic_write_bytes(path, data)             # any bytes
    atomic_write_text(path, text)              # UTF-8 text
    atomic_write_json(path, obj, indent=2)     # json.dumps(obj, **kwargs) as UTF-8
    atomic_write_npz(path, feat_cls=x, ...)    # numpy.savez of the named arrays, streamed to disk
    atomic_write_npy(path, array)              # numpy.save of one array (no pickles)

Outputs get the mode a plain ``open(path, "w")`` would give them: ``0o666 & ~umask`` (the temporary
file ``mkstemp`` creates is 0600 until then).

**Temporary files** are named ``.<target>.<pid>.<random>.tmp`` beside ``<target>``. A process killed
during a write (``kill -9``, power loss) leaves one behind; :func:`remove_stale_temps` removes it at
the next start of the same job. The rule: a temporary file is stale when the process whose pid is in
its name is no longer running on this machine **and** the file was last modified before the job
started. A live job's temporary file is never removed (its pid is running); a reused pid only keeps a
stale file a little longer. Names written by older versions (``.<target>.<random>.tmp``, no pid) are
stale when older than the job start.

**Output checks** before any work starts: :func:`check_writable_file` (``--out x.npz``) and
:func:`check_writable_dir` (``--out results/``) refuse a folder where a file is expected (or the
reverse), a parent that is a file, and a read-only location, each with a one-line message naming the
path; both also clean stale temporary files of that output. They raise the built-in
``IsADirectoryError`` / ``NotADirectoryError`` / ``PermissionError`` (bad input, exit code 2 in
:mod:`chada.errors`).

This module imports nothing from chada, so any layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npy",
    "atomic_write_npz",
    "atomic_write_text",
    "atomic_writer",
    "check_writable_dir",
    "check_writable_file",
    "check_finished",
    "finishing",
    "mark_finished",
    "naming_path",
    "remove_stale_temps",
    "safe_filename",
    "temp_owner",
    "UnfinishedFolderError",
]

# ".<target>.<pid>.<random>.tmp": mkstemp's random part is 8 characters of [a-z0-9_].
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp$")
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
# How deep check_writable_dir looks for stale temporary files below an output folder (the quickstart
# writes at most three levels down: embeddings/<group>/<model>.npz.parts/chunk_*.npz).
_CLEAN_DEPTH = 4


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: errno values that mean the disk, a quota or a limit refused a write (not the input's fault).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


@contextlib.contextmanager
def naming_path(path: str | os.PathLike) -> Iterator[None]:
    """A write refused by the disk (:data:`DISK_ERRNOS`) in the block, raised without a file name
    (``os.write``, ``numpy.save`` into a handle, a library writing through a file object) or naming a
    temporary file, is re-raised naming ``path``: a full disk (``ENOSPC``), a file-size limit (``EFBIG``), a quota (``EDQUOT``) or a
    read-only file system (``EROFS``) then says which output it stopped (:func:`chada.errors.describe`)."""
    try:
        yield
    except OSError as exc:
        name = exc.filename
        if exc.errno not in DISK_ERRNOS or (name is not None and temp_owner(Path(str(name)).name) is None):
            raise  # a read error in the block, or one that names its file already
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces ``path`` when the block ends without an error.

    The data goes to ``.<name>.<pid>.<random>.tmp`` in the same folder, is flushed and fsynced, gets
    mode ``0o666 & ~umask``, then is renamed over ``path``. On an error the temporary file is removed.
    """
    path = Path(path)
    with naming_path(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with naming_path(path), os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.replace(tmp, path)
        for written in _recorders:
            written.add(path.absolute())
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` encoded as UTF-8, written atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, newline: bool = False, **dumps_kwargs: Any) -> None:
    """``json.dumps(obj, **dumps_kwargs)`` (plus ``"\\n"`` with ``newline``), written atomically."""
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + ("\n" if newline else ""))


def atomic_write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez(path, **arrays)`` (uncompressed), written atomically and streamed into the temporary
    file (each array in buffered pieces), so no second copy of the arrays is held in memory."""
    import numpy as np

    # savez's layout; ``with`` closes the archive when a write fails (numpy < 2.1 left it to the gc: a traceback)
    with atomic_writer(path) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)


def atomic_write_npy(path: str | os.PathLike, array: Any) -> None:
    """``numpy.save(path, array, allow_pickle=False)``, written atomically."""
    import numpy as np

    with atomic_writer(path) as fh:
        np.save(fh, array, allow_pickle=False)


# ------------------------------------------------------------------------------ finished folders
DONE_NAME = "DONE.json"
_recorders: list[set[Path]] = []  # paths atomic_writer wrote while a finishing() block is open


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


# ------------------------------------------------------------------------------ stale temp files
def temp_owner(name: str) -> tuple[str, int | None] | None:
    """``(target name, pid or None for an old-style name)`` of a temporary file name, else None."""
    m = _TEMP_RE.match(name)
    if m:
        return m["target"], int(m["pid"])
    m = _LEGACY_TEMP_RE.match(name)
    if m:
        return m["target"], None
    return None


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or a pid we cannot ask about): keep its file
    return True


def _stale(entry: os.DirEntry, before: float) -> bool:
    owner = temp_owner(entry.name)
    if owner is None:
        return False
    try:
        if not entry.is_file(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_mtime >= before:
            return False
    except OSError:
        return False
    pid = owner[1]
    return pid is None or not _pid_running(pid)


def remove_stale_temps(
    folder: str | os.PathLike,
    target: str | None = None,
    *,
    depth: int = 0,
    before: float | None = None,
) -> list[Path]:
    """Remove the temporary files a killed job left in ``folder`` (rule in the module docstring).

    Args:
        folder: where to look.
        target: only temporary files of this output name (``"emb.npz"``); None: any target.
        depth: also look this many folder levels down (hidden folders are skipped).
        before: only files last modified before this time (default: now).

    Returns:
        the removed paths.
    """
    before = time.time() if before is None else before
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and _stale(entry, before):
            owner = temp_owner(entry.name)
            if target is None or (owner is not None and owner[0] == target):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
        elif depth > 0 and not entry.name.startswith("."):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    removed += remove_stale_temps(entry.path, target, depth=depth - 1, before=before)
    return removed


# ------------------------------------------------------------------------------------ output checks
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
        raise IsADirectoryError(f"{what} {p} is a folder; give a file path (for example {p / ('out' + (p.suffix or ''))})")
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
