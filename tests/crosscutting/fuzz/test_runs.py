"""Fuzz suite, runs (issue 26): two runs on one output, a full disk, half-written folders, lost messages.

Like :mod:`tests.test_fuzz_inputs`, each case runs the real command line and asks for one clean line:

- **one writer per output** (:mod:`chada.locks`): a run is started in a subprocess and stopped inside
  its work (:data:`_HOLDER` patches the entry of the real work to wait); a second run on the same
  output, in this process, must exit 2 naming the holder's pid and leave the first run's files alone
  (:data:`BUSY`: two embeds, ``--no-resume`` during a live embed, two pretrains, two evaluates, ...).
  The lock is gone after a success, an error, SIGINT and SIGTERM, and a lock whose holder died is
  taken over with a warning;
- **disk full**: every write path names the file when the disk (or a file-size limit) refuses it;
- **finished folders**: ``chada evaluate`` writes ``DONE.json`` last, and readers refuse a folder
  without it;
- **workers' messages**: a pretraining process ended right after it logged loses no message.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chada.cli import main

# A chada run stopped inside its work: CHADA_TEST_HOLD names the function the real work starts with
# (module:attribute); it writes CHADA_TEST_STARTED, then waits (CHADA_TEST_THEN=wait), or raises.
_HOLDER = """
import importlib, os, sys, time
from pathlib import Path
from chada.cli import main

mod, _, attr = os.environ["CHADA_TEST_HOLD"].partition(":")
owner = importlib.import_module(mod)
obj_name, _, meth = attr.partition(".")

def held(*args, **kwargs):
    Path(os.environ["CHADA_TEST_STARTED"]).write_text("x")
    if os.environ.get("CHADA_TEST_THEN") == "error":
        raise ValueError("the held run failed on purpose")
    time.sleep(60)

if meth:
    setattr(getattr(owner, obj_name), meth, held)
else:
    setattr(owner, obj_name, held)
sys.exit(main(sys.argv[1:]))
"""


def _pretrain_argv(tmp: Path, out: Path) -> list[str]:
    return ["pretrain", "model.name=chada_vit_test", f"data.manifest={tmp / 'm.csv'}", "run.device=cpu",
            f"run.output_dir={out}"]  # fmt: skip


# name -> (the held work, argv for an output, the output, is it a folder)
BUSY: dict[str, tuple[str, Callable[[Path, Path], list[str]], str, bool]] = {
    "embed": ("chada.encode.embed:embed_manifest", lambda t, o: [
        "embed", "--model", "chada_vit_test", "--manifest", str(t / "m.csv"), "--out", str(o)], "e.npz", False),
    "features": ("chada.encode.handmade:features_for_manifest", lambda t, o: [
        "features", "--kind", "handmade", "--manifest", str(t / "m.csv"), "--out", str(o)], "f.npz", False),
    "pretrain": ("chada.ssl.trainer:Trainer.__init__", lambda t, o: _pretrain_argv(t, o), "run", True),
    "evaluate": ("chada.tasks.evaluation:run_evaluation", lambda t, o: [
        "evaluate", "--embeddings", str(t / "e.npz"), "--label-column", "label", "--out", str(o)], "eval", True),
    "quickstart": ("chada.pipeline.quickstart:run_quickstart", lambda t, o: ["quickstart", "--out", str(o)],
                   "qs", True),
    "data-synth": ("chada.data.synth:generate", lambda t, o: ["data", "synth", str(o)], "synth", True),
    "subsets": ("chada.tasks.channel_subsets:run_channel_subsets", lambda t, o: [
        "subsets", "--manifest", str(t / "m.csv"), "--models", "a=chada_vit_test", "--out", str(o)], "sub", True),
}  # fmt: skip


def _env(tmp: Path, hold: str, then: str = "wait") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CHADA_DEBUG"}
    return env | {
        "CHADA_TEST_HOLD": hold,
        "CHADA_TEST_STARTED": str(tmp / "started"),
        "CHADA_TEST_THEN": then,
    }


def _start(tmp: Path, hold: str, argv: list[str], then: str = "wait") -> subprocess.Popen:
    """The holder, once it is inside its work (it holds the output by then)."""
    # SIGINT back to its default in the child: a suite started in the background by a non-interactive
    # shell (`bash .ci/run &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, *argv], env=_env(tmp, hold, then), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 90
    while not (tmp / "started").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the holder never started its work: {proc.communicate()}")
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _lock_of(out: Path, folder: bool) -> Path:
    return out / ".chada.lock" if folder else out.with_name(out.name + ".lock")


@pytest.mark.parametrize("name", sorted(BUSY))
def test_a_second_run_on_a_live_output_refuses_naming_the_holder(name, tmp_path, capfd, monkeypatch):
    hold, argv, out_name, folder = BUSY[name]
    out = tmp_path / out_name
    proc = _start(tmp_path, hold, argv(tmp_path, out))
    _no_work_here(monkeypatch, hold)
    try:
        rc = main(argv(tmp_path, out))
        _, err = capfd.readouterr()
        assert rc == 2, err
        assert "Traceback" not in err
        line = next(ln for ln in err.splitlines() if ": error: " in ln)
        assert f"is being written by pid {proc.pid} on host {socket.gethostname()} (chada " in line, err
        assert f"wait for it or remove {_lock_of(out, folder)} if that process is gone" in line, err
        assert line.startswith(f"chada {argv(tmp_path, out)[0]}"), line
        assert _lock_of(out, folder).exists()  # the refused run left the holder's lock alone
    finally:
        _stop(proc)


def _no_work_here(monkeypatch: pytest.MonkeyPatch, hold: str) -> None:
    """The second run, in this process, must be refused before its work: if not, fail at once."""

    def started(*args, **kwargs):
        raise RuntimeError("the second run started its work: no lock stopped it")

    monkeypatch.setattr(hold.replace(":", "."), started)


def test_no_resume_during_a_live_embed_keeps_its_chunks(tmp_path, capfd, monkeypatch):
    hold, argv, _, _ = BUSY["embed"]
    out = tmp_path / "e.npz"
    parts = tmp_path / "e.npz.parts"
    parts.mkdir()
    (parts / "chunk_000000.npz").write_bytes(b"the live run's chunk")
    proc = _start(tmp_path, hold, argv(tmp_path, out))
    _no_work_here(monkeypatch, hold)
    try:
        assert main([*argv(tmp_path, out), "--no-resume"]) == 2
        assert f"pid {proc.pid}" in capfd.readouterr().err
        assert (parts / "chunk_000000.npz").read_bytes() == b"the live run's chunk"
    finally:
        _stop(proc)


@pytest.mark.parametrize(("how", "code"), [("SIGINT", 130), ("SIGTERM", -signal.SIGTERM), ("error", 2)])
def test_the_lock_is_gone_after_an_interrupt_or_an_error(how, code, tmp_path):
    hold, argv, _, _ = BUSY["evaluate"]
    out = tmp_path / "eval"
    proc = _start(tmp_path, hold, argv(tmp_path, out), then="error" if how == "error" else "wait")
    if how == "error":
        _, err = proc.communicate(timeout=60)
        rc = proc.returncode
    else:
        rc, err = _stop(proc, getattr(signal, how))
    assert rc == code, err
    assert not (out / ".chada.lock").exists(), err
    assert not out.exists()  # the run made the folder and wrote nothing: it is removed too


def test_the_lock_is_gone_after_success(tmp_path, capfd):
    assert main(["data", "synth", str(tmp_path / "s"), "--n-per-assay", "1", "--size", "16"]) == 0
    assert not (tmp_path / "s" / ".chada.lock").exists()
    assert (tmp_path / "s" / "manifest.csv").exists()


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_a_lock_whose_holder_died_is_taken_over_with_a_warning(tmp_path, capfd):
    out = tmp_path / "s"
    out.mkdir()
    record = dict(pid=_dead_pid(), host=socket.gethostname(), command="chada data synth s", time=time.time())
    (out / ".chada.lock").write_text(json.dumps(record))
    assert main(["data", "synth", str(out), "--n-per-assay", "1", "--size", "16"]) == 0
    err = capfd.readouterr().err
    assert f"chada data synth: warning: {out}: taking over the lock of pid {record['pid']}" in err, err
    assert not (out / ".chada.lock").exists()


def test_a_lock_from_another_host_is_not_judged(tmp_path, capfd):
    out = tmp_path / "s"
    out.mkdir()
    record = dict(pid=_dead_pid(), host="elsewhere", command="chada data synth s", time=time.time())
    (out / ".chada.lock").write_text(json.dumps(record))
    assert main(["data", "synth", str(out), "--n-per-assay", "1", "--size", "16"]) == 2
    assert f"pid {record['pid']} on host elsewhere" in capfd.readouterr().err
    assert (out / ".chada.lock").exists()


def test_a_reused_pid_is_not_the_holder(tmp_path):
    """The record's pid runs, but it started at another time: another process got the pid."""
    from chada.locks import output_lock

    out = tmp_path / "x.npz"
    record = dict(pid=os.getppid(), host=socket.gethostname(), command="chada embed", time=time.time(),
                  proc_start="1")  # fmt: skip
    out.with_name("x.npz.lock").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="taking over"), output_lock(out):
        assert json.loads(out.with_name("x.npz.lock").read_text())["pid"] == os.getpid()


def test_in_one_process_a_second_lock_on_the_same_output_is_refused(tmp_path):
    from chada.locks import OutputBusyError, output_lock

    busy = pytest.raises(OutputBusyError, match=rf"pid {os.getpid()} .*\(chada embed a, since")
    with (
        output_lock(tmp_path / "e.npz", "chada embed a"),
        busy,
        output_lock(tmp_path / "e.npz", "chada embed b"),
    ):
        pass
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------- disk full, size limits
def _good_manifest(tmp: Path, n: int = 3) -> Path:
    import numpy as np
    import pandas as pd
    import tifffile

    rows = []
    for i in range(n):
        arr = (np.random.default_rng(i).random((2, 16, 16)) * 4000).astype(np.uint16)
        tifffile.imwrite(tmp / f"im{i}.tif", arr, photometric="minisblack", metadata={"axes": "CYX"})
        rows.append(dict(image_id=f"im{i}", dataset="d", file=f"im{i}.tif", channel_names="DAPI;Actin"))
    pd.DataFrame(rows).to_csv(tmp / "m.csv", index=False)
    return tmp / "m.csv"


def _features_argv(tmp: Path) -> list[str]:
    return ["features", "--kind", "shortcut", "--manifest", str(_good_manifest(tmp)), "--out", str(tmp / "o" / "f.npz"),
            "--quiet"]  # fmt: skip


def _refuse_with(code: int) -> Callable[..., None]:
    import errno as errno_

    def refuse(*args, **kwargs) -> None:
        raise OSError(code, os.strerror(code))  # as the kernel reports it: no file name

    refuse.errno = errno_  # type: ignore[attr-defined]
    return refuse


# name -> (the write refused, what is patched, argv builder, the path the message must name)
DISK_FULL: dict[str, tuple[str, Callable[[Path], list[str]], str]] = {
    "features-chunk": ("numpy.lib.format.write_array", _features_argv, "o/f.npz"),
    "features-lock": ("chada.locks.os.fsync", _features_argv, "o/f.npz.lock"),
    "data-synth-image": ("tifffile.imwrite", lambda t: ["data", "synth", str(t / "s"), "--n-per-assay", "1",
                                                       "--size", "16"], "s/"),
    "data-synth-manifest": ("chada.io.atomic.os.replace", lambda t: ["data", "synth", str(t / "s"), "--n-per-assay", "1",
                                                             "--size", "16"], "s/"),
}  # fmt: skip


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS"])
@pytest.mark.parametrize("name", sorted(DISK_FULL))
def test_a_full_disk_names_the_file_it_stopped(name, code, tmp_path, capfd, monkeypatch):
    import errno

    target, argv, where = DISK_FULL[name]
    args = argv(tmp_path)
    monkeypatch.setattr(target, _refuse_with(getattr(errno, code)))
    rc = main(args)
    _, err = capfd.readouterr()
    assert rc == 1, err
    assert "Traceback" not in err and "[Errno" not in err, err
    line = next(ln for ln in err.splitlines() if ": error: " in ln)
    what = {
        "ENOSPC": "no space left on device",
        "EDQUOT": "disk quota exceeded",
        "EROFS": "read-only file system",
    }
    assert (
        line.startswith(f"chada {args[0]}") and f": error: {what[code]} writing {tmp_path / where}" in line
    ), err
    assert "choose another --out" in line
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


_LIMITED = """
import resource, signal, sys
from chada.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""


def test_a_real_file_size_limit_names_the_file(tmp_path):
    args = _features_argv(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "CHADA_DEBUG"} | {"PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", _LIMITED, "1024", *args], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"chada features: error: file too large writing {tmp_path / 'o' / 'f.npz'}" in proc.stderr, (
        proc.stderr
    )
    assert "ulimit -f" in proc.stderr


# -------------------------------------------------------------------------------- finished folders
def _features_files(tmp: Path) -> list[Path]:
    """Two small feature files (40 images, 2 classes) that ``chada evaluate`` scores in seconds."""
    import numpy as np
    import pandas as pd

    from chada.encode.store import EmbeddingSet

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    meta = pd.DataFrame({"image_id": [f"im{i}" for i in range(40)], "dataset": "toy",
                         "label": [f"c{v}" for v in y], "split": np.where(np.arange(40) % 4 == 0, "test", "train")})  # fmt: skip
    paths = []
    for name, signal_ in (("a", 2.0), ("b", 0.2)):
        x = rng.normal(size=(40, 8)).astype(np.float32)
        x[:, 0] += signal_ * y
        EmbeddingSet({"cls": x}, meta, {"model": name}).save(tmp / f"{name}.npz")
        paths.append(tmp / f"{name}.npz")
    return paths


def _evaluate(tmp: Path, out: Path, *more: str) -> int:
    files = [str(p) for p in _features_files(tmp)]
    return main(["evaluate", "--embeddings", *files, "--label-column", "label", "--seeds", "1", "--fractions",
                 "1.0", "--out", str(out), "--quiet", *more])  # fmt: skip


def test_evaluate_writes_done_last_and_readers_check_it(tmp_path, capfd):
    from chada.io import UnfinishedFolderError, check_finished

    out = tmp_path / "eval"
    assert _evaluate(tmp_path, out) == 0
    done = check_finished(out, "evaluation")
    assert {"results.json", "results.md", "results_long.csv", "results_summary.csv"} <= set(done["files"])
    assert any(name.endswith(".png") for name in done["files"]), sorted(done["files"])
    assert os.path.getmtime(out / "DONE.json") >= max(os.path.getmtime(out / n) for n in done["files"])
    # results.md from another run (or edited): the folder no longer reads as one finished run
    (out / "results.md").write_text("# another run\n")
    with pytest.raises(UnfinishedFolderError, match=r"results.md changed after the evaluation finished"):
        check_finished(out, "evaluation")


@pytest.mark.parametrize("how", ["interrupt", "disk-full"])
def test_an_evaluation_stopped_while_writing_is_not_finished(how, tmp_path, capfd, monkeypatch):
    import errno

    from chada.io import UnfinishedFolderError, check_finished

    out = tmp_path / "eval"
    assert _evaluate(tmp_path, out, "--no-plots") == 0  # a finished folder, then a second run into it
    check_finished(out)

    def stop(*args, **kwargs):
        if how == "interrupt":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("chada.tasks.evaluation.plot_results", stop)  # after results.json, before the figures
    assert _evaluate(tmp_path, out) == (130 if how == "interrupt" else 1)
    assert (out / "results.json").exists() and not (out / "DONE.json").exists()
    with pytest.raises(UnfinishedFolderError, match=r"not a finished evaluation \(no readable DONE.json"):
        check_finished(out, "evaluation")


def test_files_of_the_previous_run_that_this_run_did_not_write_are_removed(tmp_path, capfd):
    from chada.io import check_finished

    out = tmp_path / "eval"
    assert _evaluate(tmp_path, out) == 0
    figures = sorted(p.name for p in out.glob("*.png"))
    assert figures
    assert _evaluate(tmp_path, out, "--no-plots") == 0
    assert not list(out.glob("*.png")), "figures of the first run under the second run's results"
    assert not any(n.endswith(".png") for n in check_finished(out)["files"])


def _fake_quickstart(run: Path) -> None:
    (run / "evaluation").mkdir(parents=True)
    (run / "evaluation" / "results_summary.csv").write_text("task,model\n")
    for name in ("machine.json", "run.json", "settings.json"):
        (run / name).write_text("{}")


def test_the_readme_block_refuses_an_unfinished_quickstart_folder(tmp_path):
    from chada.io import UnfinishedFolderError
    from chada.pipeline.readme import results_block

    _fake_quickstart(tmp_path / "qs")
    with pytest.raises(
        UnfinishedFolderError, match=r"qs: not a finished quickstart run folder .*chada quickstart --out"
    ):
        results_block(tmp_path / "qs")


def test_a_resumed_quickstart_redoes_an_evaluation_stage_whose_folder_is_unfinished(tmp_path):
    from chada.io import mark_finished
    from chada.pipeline.quickstart import _redo_if_unfinished
    from chada.pipeline.settings import Stages

    stages = Stages(tmp_path, lambda m: None)
    ev = tmp_path / "evaluation"
    ev.mkdir()
    (ev / "results.json").write_text("{}")
    stages.run("evaluate", lambda: {"out": str(ev)})
    mark_finished(ev, [ev / "results.json"])
    _redo_if_unfinished(stages, "evaluate", lambda m: None)
    assert stages.done("evaluate") is not None  # finished: reused
    (ev / "DONE.json").unlink()  # a later write into it was interrupted
    _redo_if_unfinished(stages, "evaluate", lambda m: None)
    assert stages.done("evaluate") is None  # run again


# ------------------------------------------------------------------- item 9: workers' last messages
def _log_then_die(queue, n: int) -> None:  # pragma: no cover - runs in a spawned process
    import logging

    from chada.pipeline.console import worker_logging

    worker_logging(queue)
    for i in range(n):
        logging.getLogger("chada.ssl").warning("collapse warning %d", i)
    os._exit(0)  # as Pool.terminate() ends a worker: no finalizer, no feeder-thread flush


def test_a_worker_killed_right_after_logging_loses_no_message(capfd):
    """The quickstart's pool is always terminate()d; a record queued just before must still print."""
    import multiprocessing as mp

    from chada.pipeline.console import quickstart_console

    n = 40
    with quickstart_console() as queue:
        proc = mp.get_context("spawn").Process(target=_log_then_die, args=(queue, n))
        proc.start()
        proc.join(60)
    err = capfd.readouterr().err
    got = [line for line in err.splitlines() if "collapse warning" in line]
    assert len(got) == n, err
    assert got[0] == "chada quickstart: warning: collapse warning 0"


# ------------------------------------------------------------------ minor: library warnings, one line
_LEAK = """
import multiprocessing as mp, os, sys
from chada.errors import one_line_warnings

def leak():
    lock = mp.get_context("spawn").Lock()  # registered with the resource tracker
    os._exit(1)                            # as a terminated worker: never unregistered

if __name__ == "__main__":
    with one_line_warnings("quickstart"):
        p = mp.get_context("spawn").Process(target=leak)
        p.start()
        p.join()
"""


def test_the_resource_trackers_leak_note_after_killed_workers_is_not_printed_raw(tmp_path):
    script = tmp_path / "leak.py"
    script.write_text(_LEAK)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "resource_tracker" not in proc.stderr and "UserWarning" not in proc.stderr, proc.stderr


def test_matplotlib_warnings_of_an_unwritable_home_are_one_chada_line_each(tmp_path):
    home = tmp_path / "home"
    home.write_text("a file, not a folder: matplotlib cannot make its config folder in it")
    manifest = _good_manifest(tmp_path)
    env = {
        k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
    }
    code = "import sys; from chada.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "data", "summary", str(manifest), "--plot",
                           str(tmp_path / "p.png")], capture_output=True, text=True, env=env | {"HOME": str(home)},
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "atplotlib" in ln]
    assert lines and all(ln.startswith("chada data summary: warning: ") for ln in lines), proc.stderr


def test_a_hostile_done_json_removes_nothing_outside_its_folder(tmp_path, capfd):
    out = tmp_path / "eval"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "DONE.json").write_text(json.dumps({"files": {"../victim.txt": {"bytes": 7, "sha256": "x"}}}))
    assert _evaluate(tmp_path, out, "--no-plots") == 0
    assert victim.read_text() == "keep me"
