"""Kill a launched command with every process under it, torchrun's workers included.

torchrun starts each worker in a session of its own (``start_new_session=True`` in torch's subprocess
handler), so ``os.killpg`` on the launcher's group does not reach them: a SIGKILL "crash" of a DDP run
would leave its workers training (and holding the run's output lock). The tree is read from /proc
before anything is killed, since a killed parent's children are re-parented and lost from view.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs), from /proc; [] where /proc is missing."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command name is in parentheses and may hold spaces: split after its closing one
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """``sig`` to ``pid``'s process group and to every process below it; errors swallowed (gone already)."""
    below = descendants(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pid, sig)
    for p in below:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.kill(p, sig)
