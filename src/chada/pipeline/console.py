"""What the quickstart prints: one logger, one line per message, nothing drawn over a progress bar.

Every message goes through the ``chada`` logger. :func:`quickstart_console` gives it one handler that
writes with ``tqdm.write`` (so a message lands above the pretraining bars, not inside one) as
``chada quickstart: warning: ...``, and routes ``warnings.warn`` to the same logger without the file,
line number and source line that Python's default shows.

The DINO runs are spawned processes: their messages reach the parent through a queue
(:func:`worker_logging`, the pool's initializer) and print there, named after their encoder
(:func:`encoder_warnings`). The queue is a ``SimpleQueue``: a worker's ``put`` returns once the record is
in the pipe. A plain ``multiprocessing.Queue`` hands records to a feeder thread, and the pool's
``terminate()`` (which ends every quickstart pretraining pool) kills the worker before that thread wrote
them, so a collapse warning logged just before a run ended could vanish. The One-Channel ViT's "storing the mean over channels" warning, which
every mixed-channel embedding file would repeat, is replaced by one note per encoder from the embed
stage, which also says why.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["encoder_warnings", "quickstart_console", "worker_logging"]

LOGGER = "chada"


class _TqdmHandler(logging.Handler):
    """Writes records with ``tqdm.write``: above the active bars, never through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - a broken console must not stop the run
            self.handleError(record)


class _Formatter(logging.Formatter):
    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        msg = " ".join(record.getMessage().split())  # one line, whatever the message held
        if record.levelno >= logging.WARNING:
            return f"chada {self.command}: {record.levelname.lower()}: {msg}"
        return msg


def _not_pool_note(record: logging.LogRecord) -> bool:
    """False for chada.encode.encoders' "pool ... concatenates one block per channel" warning: the
    quickstart embeds many files per encoder and says it once per encoder itself (:mod:`.stages`)."""
    return not (
        record.name == "chada.encode.encoders" and "concatenates one block per channel" in str(record.msg)
    )


class _SyncQueueHandler(logging.handlers.QueueHandler):
    """A ``QueueHandler`` for a ``SimpleQueue``: ``put`` writes the record to the pipe before returning."""

    def enqueue(self, record: logging.LogRecord) -> None:
        self.queue.put(record)


class _SyncQueueListener(logging.handlers.QueueListener):
    """A ``QueueListener`` reading a ``SimpleQueue`` (which has no ``block`` argument, no ``put_nowait``)."""

    def dequeue(self, block: bool) -> Any:
        return self.queue.get()

    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)


def _warnings_to(logger: logging.Logger, prefix: str = "") -> Callable[..., None]:
    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        name = "" if category in (UserWarning, Warning) else f"{category.__name__}: "
        logger.warning("%s%s%s", prefix, name, message)

    return show


@contextmanager
def quickstart_console(command: str = "quickstart") -> Iterator[Any]:
    """Within the block the ``chada`` logger prints INFO and above through one handler, warnings go to
    it, and repeated notes are dropped. Yields ``(queue, listener)`` for spawned workers: pass the
    queue to :func:`worker_logging`; the listener runs for the whole block."""
    import multiprocessing as mp

    logger = logging.getLogger(LOGGER)
    handler = _TqdmHandler()
    handler.setFormatter(_Formatter(command))
    handler.addFilter(_not_pool_note)
    saved = (logger.level, logger.propagate, warnings.showwarning)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # one line per message, also when the root logger has a handler
    warnings.showwarning = _warnings_to(logger)
    queue = mp.get_context("spawn").SimpleQueue()
    listener = _SyncQueueListener(queue, handler, respect_handler_level=True)
    listener.start()
    try:
        yield queue
    finally:
        listener.stop()
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        warnings.showwarning = saved[2]


def worker_logging(queue: Any) -> None:
    """In a spawned worker: the ``chada`` logger and ``warnings.warn`` go to the parent's console."""
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [_SyncQueueHandler(queue)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    warnings.showwarning = _warnings_to(logger)


@contextmanager
def encoder_warnings(encoder: str) -> Iterator[None]:
    """Within the block every warning is logged as ``pretrain <encoder>: <message>``."""
    saved = warnings.showwarning
    warnings.showwarning = _warnings_to(logging.getLogger(f"{LOGGER}.pipeline"), f"pretrain {encoder}: ")
    try:
        yield
    finally:
        warnings.showwarning = saved
