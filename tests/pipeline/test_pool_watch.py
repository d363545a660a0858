"""``chada quickstart`` runs the pretrainings in a process pool: a pool process that dies ends the run
with a message instead of a wait that never ends."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from chada.pipeline.pretraining import _watch_pretraining


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _nap() -> int:
    time.sleep(30)
    return 0


def test_a_killed_pretraining_process_ends_the_watch(tmp_path: Path) -> None:
    s = SimpleNamespace(out=tmp_path, fast=True, epochs_of=lambda enc: 1)
    pool = mp.get_context("spawn").Pool(2)
    raised: list[BaseException] = []

    def watch() -> None:
        try:
            _watch_pretraining(s, jobs, pool)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            raised.append(exc)

    try:
        jobs = {"chada_vit": pool.apply_async(_die), "one_channel_vit": pool.apply_async(_nap)}
        thread = threading.Thread(
            target=watch, daemon=True
        )  # a watch that never ends must not hang the suite
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), "the watch still waits for a dead process"
    finally:
        pool.terminate()
        pool.join()
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError)
    msg = str(raised[0])
    assert "exit code -9" in msg and "before chada_vit, one_channel_vit finished" in msg and "again" in msg
