"""One writer per output: a lock file that a second ``chada`` run on the same output finds and refuses.

    with output_lock("emb.npz", "chada embed ..."):   # emb.npz.lock, or <folder>/.chada.lock
        ...                                            # a second run raises OutputBusyError

    hold_output("results/")     # the same lock, released by release_held() (the CLI's ``main``) or at exit

The lock of an output **file** is ``<file>.lock`` beside it; the lock of an output **folder** is
``<folder>/.chada.lock`` (the folder is created), so a read-only parent does not stop a run. The file is
created with ``O_CREAT | O_EXCL`` and holds one JSON line: pid, host, the command line, the start time
and the pid's start time (from ``/proc``: a reused pid is not mistaken for the holder). The holder also
keeps an ``fcntl.flock`` on it, which the kernel drops when the process dies however it dies.

A lock is **stale** when nobody holds its ``flock`` and its holder ran on this host and is gone (no
such pid, or a pid started at another time); a stale lock is taken over with a warning. A lock
written on another host (a shared file system) is never judged: the run refuses, and the message
says to remove the lock file if that process is gone. A lock is released (the file removed) when the
block ends, on an exception, on Ctrl-C and on SIGTERM (the handler releases, then dies of the signal
as before).

This module imports nothing from chada, so any layer may use it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["OutputBusyError", "OutputLock", "hold_output", "lock_path", "output_lock", "release_held"]

FOLDER_LOCK = ".chada.lock"
_EMPTY_GRACE_S = 2.0  # a lock file still empty this long after creation: its creator died before writing
_held: list[OutputLock] = []
#: The command line a lock records (the CLI sets it; ``chada`` + ``sys.argv[1:]`` otherwise).
COMMAND_LINE: str | None = None
_sigterm_installed = False


class OutputBusyError(FileExistsError):
    """Another live run holds the output (bad input: exit code 2 under :mod:`chada.errors`)."""


def lock_path(output: str | os.PathLike, folder: bool | None = None) -> Path:
    """``<file>.lock`` for an output file, ``<folder>/.chada.lock`` for an output folder.

    ``folder``: None guesses from the path (an existing folder, or a name without a suffix)."""
    p = Path(output)
    if folder is None:
        folder = p.is_dir() or (not p.exists() and not p.suffix)
    return p / FOLDER_LOCK if folder else p.with_name(p.name + ".lock")


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        pass  # another user's process: running
    now = _proc_start(pid)
    return started is None or now is None or now == started


def _read(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(output: Path, lock: Path, info: dict[str, Any] | None) -> str:
    if not info:
        return f"{output} is locked by {lock} (unreadable); remove {lock} if no chada run writes {output}"
    since = time.strftime("%H:%M", time.localtime(float(info.get("time", 0))))
    day = time.strftime("%Y-%m-%d ", time.localtime(float(info.get("time", 0))))
    if day == time.strftime("%Y-%m-%d ", time.localtime()):
        day = ""
    cmd = str(info.get("command", "?"))
    cmd = cmd if len(cmd) <= 60 else cmd[:57] + "..."
    return (
        f"{output} is being written by pid {info.get('pid')} on host {info.get('host')} ({cmd}, since {day}{since}); "
        f"wait for it or remove {lock} if that process is gone"
    )


class OutputLock:
    """The lock of one output (module docstring). :meth:`acquire` raises :class:`OutputBusyError`."""

    def __init__(
        self, output: str | os.PathLike, command: str | None = None, *, folder: bool | None = None
    ) -> None:
        self.output = Path(output)
        self.path = lock_path(output, folder)
        self.command = command or COMMAND_LINE or " ".join(["chada", *sys.argv[1:]])
        self.fd: int | None = None
        self.created: list[Path] = []  # the folder acquire() made, removed again if the run left it empty
        self.pid = os.getpid()  # a forked child (a DataLoader worker) inherits the lock but never releases it

    def _payload(self) -> bytes:
        info = dict(pid=os.getpid(), host=socket.gethostname(), command=self.command, time=time.time(),
                    proc_start=_proc_start(os.getpid()))  # fmt: skip
        return (json.dumps(info) + "\n").encode("utf-8")

    def _own(self, fd: int) -> None:
        """Write our record into ``fd`` (already flocked) and keep it."""
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, self._payload())
            os.fsync(fd)
        except OSError as exc:  # a full disk: name the lock file
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        self.fd = fd

    def acquire(self) -> OutputLock:
        self.created = [] if self.path.parent.exists() else [self.path.parent]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if self._take_over_if_stale():
                    return self
                continue  # the holder let go between our two looks: try again
            fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else can have it: we just created the file
            try:
                self._own(fd)
            except OSError:
                os.unlink(self.path)  # no empty lock left behind
                os.close(fd)
                raise
            return self
        raise OutputBusyError(_describe(self.output, self.path, None))

    def _take_over_if_stale(self) -> bool:
        """True when the existing lock was stale and is now ours; False to retry; raises when live."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        keep = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputBusyError(_describe(self.output, self.path, _read(fd))) from None
            if not _same_file(fd, self.path):
                return False  # released and removed meanwhile
            info = _read(fd)
            if info is None:
                if time.time() - os.fstat(fd).st_mtime < _EMPTY_GRACE_S:
                    time.sleep(0.05)  # its creator is about to write it
                    return False
            elif info.get("host") != socket.gethostname() or _alive(
                int(info.get("pid", -1)), info.get("proc_start")
            ):
                raise OutputBusyError(_describe(self.output, self.path, info))
            who = (
                f"pid {info.get('pid')} ({info.get('command')})" if info else "a run that died while starting"
            )
            warnings.warn(f"{self.output}: taking over the lock of {who}, which is gone", stacklevel=3)
            self._own(fd)
            keep = True
            return True
        finally:
            if not keep:
                os.close(fd)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        if os.getpid() != self.pid:
            os.close(fd)  # the parent's flock stays: it is held through the parent's own descriptor
            return
        with contextlib.suppress(OSError):
            if _same_file(fd, self.path):
                os.unlink(self.path)  # removed before the flock goes, so nobody judges it stale
        os.close(fd)
        for folder in self.created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a run refused before its first write leaves no folder

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def output_lock(
    output: str | os.PathLike, command: str | None = None, *, folder: bool | None = None
) -> Iterator[OutputLock]:
    """Hold the lock of ``output`` for the block (module docstring). Raises :class:`OutputBusyError`."""
    lock = OutputLock(output, command, folder=folder).acquire()
    try:
        yield lock
    finally:
        lock.release()


def hold_output(
    output: str | os.PathLike, command: str | None = None, *, folder: bool | None = None
) -> OutputLock:
    """Take the lock of ``output`` until :func:`release_held` (the CLI calls it when a command ends), a
    SIGTERM or the end of the process. Taking an output this process already holds is a no-op."""
    path = lock_path(output, folder)
    for lock in _held:
        if lock.path == path:
            return lock
    lock = OutputLock(output, command, folder=folder).acquire()
    _held.append(lock)
    _install_sigterm()
    return lock


def release_held() -> None:
    """Release every lock :func:`hold_output` took."""
    while _held:
        _held.pop().release()


def _install_sigterm() -> None:
    """On SIGTERM: release the held locks, then die of the signal as the default handler would."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # someone else handles it (torchrun, a test harness): they decide

    def on_term(signum: int, frame: Any) -> None:
        release_held()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    _sigterm_installed = True


atexit.register(release_held)
