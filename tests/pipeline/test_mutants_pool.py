"""The quickstart's parallel pretrainings (chada.pipeline.pretraining) with a recording pool and progress
bar in place of spawned processes and tqdm: how many run at once, what each worker is given, the bars'
progress and the pool's shutdown (issue 26 item 10, mutation testing of ``chada.pipeline``)."""

from __future__ import annotations

import os

import pytest

from chada.pipeline import pretraining as pt
from chada.pipeline.settings import QuickstartSettings, Stages


class _Result:
    def __init__(self, value, ready_after=0):
        self.value, self.calls = value, 0
        self.ready_after = ready_after

    def ready(self):
        self.calls += 1
        return self.calls > self.ready_after

    def successful(self):
        return True

    def get(self):
        return self.value


class _Pool:
    made: list = []

    def __init__(self, n, initializer, initargs):
        self.n, self.initializer, self.initargs = n, initializer, initargs
        self.jobs, self.events = [], []
        self._pool = []
        _Pool.made.append(self)

    def apply_async(self, fn, args):
        self.jobs.append((fn, args))
        return _Result({"teacher": f"t/{args[-1]}", "untrained": "u", "seconds": 1.0})

    def close(self):
        self.events.append("close")

    def terminate(self):
        self.events.append("terminate")

    def join(self):
        self.events.append("join")


def test_runs_at_once_in_a_pool_with_the_parents_pid_and_queue(tmp_path, monkeypatch):
    import multiprocessing as mp

    _Pool.made.clear()
    contexts = []
    monkeypatch.setattr(
        mp, "get_context", lambda kind: contexts.append(kind) or type("C", (), {"Pool": _Pool})
    )
    watched = []
    monkeypatch.setattr(
        pt, "_watch_pretraining", lambda s, jobs, pool: watched.append((s, sorted(jobs), pool))
    )
    lines = []
    s = QuickstartSettings.make(tmp_path, jobs=2, fast=True)
    stages = Stages(tmp_path, lines.append)
    stages.run("pretrain_chada_vit", lambda: {"teacher": "old"})
    res = pt.pretrain_all(s, stages, {"pretrain_corpus": "c"}, log_queue="Q")
    (pool,) = _Pool.made
    assert contexts == ["spawn"] and pool.n == 2  # min(jobs, pending)
    assert pool.initializer is pt._worker_init and pool.initargs == (os.getpid(), "Q")
    assert [a for _, a in pool.jobs] == [
        (s, {"pretrain_corpus": "c"}, "one_channel_vit", "one_channel_vit_test", True, 0, "one_channel_vit"),
        (
            s,
            {"pretrain_corpus": "c"},
            "inter_channel_vit",
            "inter_channel_vit_test",
            True,
            0,
            "inter_channel_vit",
        ),
    ]
    assert all(fn is pt.stage_pretrain for fn, _ in pool.jobs)
    assert watched == [(s, ["inter_channel_vit", "one_channel_vit"], pool)]
    assert pool.events == ["close", "terminate", "join"]
    assert res == {"chada_vit": stages.done("pretrain_chada_vit"), "one_channel_vit": stages.done("pretrain_one_channel_vit"),
                   "inter_channel_vit": stages.done("pretrain_inter_channel_vit")}  # fmt: skip
    assert res["one_channel_vit"]["teacher"] == "t/one_channel_vit"
    assert lines[2] == (f"[pretrain] one_channel_vit, inter_channel_vit: 2 at once; logs in {tmp_path / 'pretrain'}"
                        "/<run>/log.csv")  # fmt: skip


def test_default_jobs_follow_the_cores_and_an_error_still_ends_the_pool(tmp_path, monkeypatch):
    import multiprocessing as mp

    _Pool.made.clear()
    monkeypatch.setattr(mp, "get_context", lambda kind: type("C", (), {"Pool": _Pool}))

    class Stop(Exception):  # not KeyboardInterrupt: one escaping the one-core case below must fail the test,
        pass  # not interrupt pytest

    def boom(s, jobs, pool):
        raise Stop

    monkeypatch.setattr(pt, "_watch_pretraining", boom)
    monkeypatch.setattr(pt.os, "cpu_count", lambda: 2)
    with pytest.raises(Stop):
        pt.pretrain_all(QuickstartSettings.make(tmp_path), Stages(tmp_path, lambda m: None), {})
    assert _Pool.made[0].n == 3 and _Pool.made[0].events == ["terminate", "join"]  # all three, no close
    monkeypatch.setattr(pt.os, "cpu_count", lambda: 1)
    got = []
    monkeypatch.setattr(pt, "stage_pretrain", lambda *a: got.append(a[-1]) or {})
    pt.pretrain_all(QuickstartSettings.make(tmp_path / "b"), Stages(tmp_path / "b", lambda m: None), {})
    assert (
        got == ["chada_vit", "one_channel_vit", "inter_channel_vit"] and len(_Pool.made) == 1
    )  # one core: in turn
    monkeypatch.setattr(pt.os, "cpu_count", lambda: None)  # unknown: taken as one core
    got.clear()
    pt.pretrain_all(QuickstartSettings.make(tmp_path / "c"), Stages(tmp_path / "c", lambda m: None), {})
    assert len(got) == 3 and len(_Pool.made) == 1


class _Bar:
    made: list = []

    def __init__(self, **kw):
        self.kw, self.n, self.updates, self.closed, self.refreshed = kw, kw.get("initial", 0), [], False, 0
        _Bar.made.append(self)

    def update(self, d):
        self.updates.append(d)
        self.n += d

    def refresh(self):
        self.refreshed += 1

    def close(self):
        self.closed = True


def test_watch_moves_each_bar_to_the_epochs_done(tmp_path, monkeypatch):
    import tqdm.auto

    _Bar.made.clear()
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    sleeps = []
    monkeypatch.setattr(pt.time, "sleep", sleeps.append)
    log = tmp_path / "pretrain" / "chada_vit" / "log.csv"
    log.parent.mkdir(parents=True)
    log.write_text("step,epoch\n1,1.5\n")
    s = QuickstartSettings.make(tmp_path, epochs=4, baseline_epochs=2)
    jobs = {"chada_vit": _Result(None, ready_after=2), "one_channel_vit": _Result(None, ready_after=0)}
    pt._watch_pretraining(s, jobs)
    a, b = _Bar.made
    assert a.kw == {"total": 4, "desc": "dino chada_vit", "unit": "epoch", "position": 0, "leave": True,
                    "disable": False, "dynamic_ncols": True, "smoothing": 0, "mininterval": 0, "initial": 1.5,
                    "bar_format": "{desc:<26}{percentage:3.0f}%|{bar}| {n:.1f}/{total} epochs [{elapsed}<{remaining}]"}  # fmt: skip
    assert (b.kw["total"], b.kw["position"], b.kw["initial"]) == (2, 1, 0.0)
    assert a.updates == [0.0, 2.5] and a.n == 4 and b.updates[0] == 2 and b.n == 2
    assert sleeps == [2.0] and a.closed and b.closed and a.refreshed >= 2
    assert QuickstartSettings.make(tmp_path, fast=True).fast  # --fast turns the bars off:
    _Bar.made.clear()
    pt._watch_pretraining(QuickstartSettings.make(tmp_path, fast=True), {"chada_vit": _Result(None)})
    assert _Bar.made[0].kw["disable"] is True


def test_worker_init_routes_logs_and_watches_the_parent(monkeypatch):
    import chada.pipeline.console as console

    got = []
    monkeypatch.setattr(console, "worker_logging", lambda q: got.append(("log", q)))
    monkeypatch.setattr(pt, "_exit_with_parent", lambda pid: got.append(("watch", pid)))
    pt._worker_init(123, "Q")
    pt._worker_init(7, None)
    assert got == [("log", "Q"), ("watch", 123), ("watch", 7)]


def test_stage_pretrain_reads_the_quickstart_recipe_and_names_the_run_in_warnings(
    tmp_path, monkeypatch, caplog
):
    import logging
    import warnings

    import chada.ssl as ssl

    seen = {}

    def fake(config, overrides, resume):
        seen["o"] = overrides
        warnings.warn("the teacher looks collapsed", UserWarning, stacklevel=1)
        folder = tmp_path / "pretrain" / "chada_vit"
        for sub in ("teacher", "init"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub / "config.json").write_text("{}")
        return folder

    monkeypatch.setattr(ssl, "pretrain", fake)
    s = QuickstartSettings.make(tmp_path, epochs=5, baseline_epochs=2)
    with caplog.at_level(logging.WARNING, logger="chada.pipeline"):
        r = pt.stage_pretrain(s, {"pretrain_corpus": "c"}, "chada_vit", "chada_vit_test")
    assert r["epochs"] == 5 and "optim.epochs=5" in seen["o"]  # ChAda-ViT's budget, not the baselines'
    # the recipe's lr warm-up (3 epochs) fits in 5; DINO's teacher-temperature warm-up (30) does not
    assert [o for o in seen["o"] if "warmup" in o] == ["dino.warmup_teacher_temp_epochs=5"]
    assert [r.getMessage() for r in caplog.records] == ["pretrain chada_vit: the teacher looks collapsed"]


def test_watch_reads_the_epochs_of_a_running_job_from_its_log(tmp_path, monkeypatch):
    """While a run is not finished its bar follows the last row of ``pretrain/<run>/log.csv``, which
    grows between polls (a row per epoch here: 1.5, then 3.0, then the job is done at 4)."""
    import tqdm.auto

    _Bar.made.clear()
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    log = tmp_path / "pretrain" / "chada_vit" / "log.csv"
    log.parent.mkdir(parents=True)
    log.write_text("step,epoch\n1,1.5\n")
    monkeypatch.setattr(pt.time, "sleep", lambda t: log.write_text("step,epoch\n1,1.5\n2,3.0\n"))
    s = QuickstartSettings.make(tmp_path, epochs=4)
    pt._watch_pretraining(s, {"chada_vit": _Result(None, ready_after=4)})
    assert _Bar.made[0].updates == [0.0, 1.5, 1.0] and _Bar.made[0].n == 4


def test_last_epoch_reads_past_a_byte_that_is_not_utf8(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes(b"step,epoch,note\n1,0.5,caf\xe9\n2,1.0,ok\n")
    assert pt._last_epoch(log) == 1.0
