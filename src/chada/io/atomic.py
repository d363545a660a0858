"""Atomic file writes: a reader (a resumed run, a second process, a user opening the file) never sees
half a file. Every output is written to a temporary file in the destination's folder, flushed to disk,
then renamed over the destination (``os.replace`` is atomic within one file system).

Outputs get the mode a plain ``open(path, "w")`` would give them: ``0o666 & ~umask`` (the temporary
file ``mkstemp`` creates is 0600 until then).

**Temporary files** are named ``.<target>.<pid>.<random>.tmp`` beside ``<target>``. A process killed
during a write (``kill -9``, power loss) leaves one behind; :func:`remove_stale_temps` removes it at
the next start of the same job. The rule: a temporary file is stale when the process whose pid is in
its name is no longer running on this machine **and** the file was last modified before the job
started. A live job's temporary file is never removed (its pid is running); a reused pid only keeps a
stale file a little longer. Names written by older versions (``.<target>.<random>.tmp``, no pid) are
stale when older than the job start.
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

# ".<target>.<pid>.<random>.tmp": mkstemp's random part is 8 characters of [a-z0-9_].
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp$")
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
_recorders: list[set[Path]] = []  # paths atomic_writer wrote while a finishing() block is open


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


def atomic_write_json(
    path: str | os.PathLike, obj: Any, *, newline: bool = False, **dumps_kwargs: Any
) -> None:
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
