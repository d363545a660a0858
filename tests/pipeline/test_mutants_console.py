"""The quickstart's console (chada.pipeline.console) in one process: the line format, the filters, the
warnings hook and what the context managers restore (issue 26 item 10, mutation testing of
``chada.pipeline``)."""

from __future__ import annotations

import logging
import queue as queue_mod
import warnings

from chada.pipeline import console as cs


def _record(msg, level=logging.WARNING, name="chada.x", args=()):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_formatter_one_line_and_prefix_from_warning_up():
    f = cs._Formatter("evaluate")
    assert f.command == "evaluate"
    assert f.format(_record("a\n  b\tc  ", logging.WARNING)) == "chada evaluate: warning: a b c"
    assert f.format(_record("x %s", logging.ERROR, args=("y",))) == "chada evaluate: error: x y"
    assert f.format(_record("plain\nline", logging.INFO)) == "plain line"


def test_pool_note_filter_only_drops_the_encoders_pool_note():
    note = "pool %r of %s concatenates one block per channel, but ..."
    assert not cs._not_pool_note(_record(note, name="chada.encode.encoders"))
    assert cs._not_pool_note(_record(note, name="chada.encode.other"))
    assert cs._not_pool_note(_record("another warning", name="chada.encode.encoders"))


def test_warnings_hook_names_the_category_unless_plain():
    got = []

    class L:
        def warning(self, fmt, *args):
            got.append(fmt % args)

    show = cs._warnings_to(L(), "pre: ")
    show("m1", UserWarning, "f.py", 3)
    show("m2", Warning, "f.py", 3)
    show("m3", RuntimeWarning, "f.py", 3, None, "src")
    assert got == ["pre: m1", "pre: m2", "pre: RuntimeWarning: m3"]
    cs._warnings_to(L())("m4", FutureWarning, "f.py", 1)
    assert got[-1] == "FutureWarning: m4"


def test_tqdm_handler_writes_to_stderr_and_survives_a_broken_console(capsys, monkeypatch):
    h = cs._TqdmHandler()
    h.setFormatter(cs._Formatter("quickstart"))
    h.emit(_record("hello"))
    assert capsys.readouterr().err == "chada quickstart: warning: hello\n"
    import tqdm

    def broken(*a, **k):
        raise OSError("closed")

    monkeypatch.setattr(tqdm.tqdm, "write", broken)
    seen = []
    monkeypatch.setattr(h, "handleError", seen.append)
    h.emit(_record("lost"))
    assert len(seen) == 1 and seen[0].msg == "lost"


def test_sync_queue_handler_and_listener_use_put_and_get():
    q = queue_mod.SimpleQueue()
    h = cs._SyncQueueHandler(q)
    rec = _record("m")
    h.enqueue(rec)
    assert q.get() is rec
    got = []

    class Sink(logging.Handler):
        def handle(self, record):
            got.append(record.getMessage())
            return True

    lst = cs._SyncQueueListener(q, Sink())
    q.put(_record("one"))
    assert lst.dequeue(False).getMessage() == "one"
    lst.enqueue_sentinel()
    assert q.get() is lst._sentinel
    lst.start()
    q.put(_record("two"))
    lst.stop()
    assert got == ["two"]


def test_quickstart_console_routes_and_restores(capsys):
    logger = logging.getLogger("chada")
    before = (logger.level, logger.propagate, warnings.showwarning, list(logger.handlers))
    with cs.quickstart_console("profile") as q:
        assert logger.level == logging.INFO and logger.propagate is False
        logging.getLogger("chada.ssl").info("info\nline")
        logging.getLogger("chada.ssl").debug("hidden")
        logging.getLogger("chada.encode.encoders").warning(
            "pool %r concatenates one block per channel", "cls"
        )
        warnings.warn("careful", RuntimeWarning, stacklevel=1)
        q.put(_record("from a worker"))
    err = capsys.readouterr().err.splitlines()
    assert sorted(err) == ["chada profile: warning: RuntimeWarning: careful",
                           "chada profile: warning: from a worker", "info line"]  # fmt: skip
    assert (logger.level, logger.propagate, warnings.showwarning, list(logger.handlers)) == before


def test_worker_logging_sends_logs_and_warnings_to_the_queue():
    logger = logging.getLogger("chada")
    saved = (logger.level, logger.propagate, warnings.showwarning, list(logger.handlers))
    q = queue_mod.SimpleQueue()
    try:
        cs.worker_logging(q)
        assert logger.level == logging.INFO and logger.propagate is False and len(logger.handlers) == 1
        logging.getLogger("chada.ssl").info("step 3")
        warnings.warn("collapsed", RuntimeWarning, stacklevel=1)
        assert q.get().getMessage() == "step 3"
        assert q.get().getMessage() == "RuntimeWarning: collapsed"
        assert q.empty()
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        warnings.showwarning = saved[2]
        logger.handlers[:] = saved[3]


def test_encoder_warnings_names_the_run_and_restores(caplog):
    before = warnings.showwarning
    with caplog.at_level(logging.WARNING, logger="chada.pipeline"), cs.encoder_warnings("chada_vit_s1"):
        warnings.warn("teacher collapsed", UserWarning, stacklevel=1)
    assert warnings.showwarning is before
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("chada.pipeline", "pretrain chada_vit_s1: teacher collapsed")
    ]
