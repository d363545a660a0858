"""gpu_check's parts that protect the one GPU run: torchrun's real error line, time-boxed runs killed
as a process group, CUDA statistics calls that cannot empty a section, and ``throughput.py --device
cuda:N`` acting on GPU N (``torch.cuda`` replaced by fakes: no GPU here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_model_checks  # noqa: E402
import gpu_runs  # noqa: E402
import throughput  # noqa: E402

# What torchrun printed for 2 NCCL ranks on one GPU (torch 2.x layout; paths shortened).
TORCHRUN_STDERR = """\
W1206 12:00:00.000000 1234 torch/distributed/run.py:792] Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being overloaded
[rank1]: Traceback (most recent call last):
[rank1]:   File "/usr/bin/chada", line 8, in <module>
[rank1]:     sys.exit(main())
[rank1]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:317, invalid usage (run with NCCL_DEBUG=WARN for details), NCCL version 2.21.5
[rank1]: ncclInvalidUsage: This usually reflects invalid usage of NCCL library.
[rank1]: Last error:
[rank1]: Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 1b000
E1206 12:00:01.000000 1234 torch/distributed/elastic/multiprocessing/api.py:869] failed (exitcode: 1) local_rank: 1 (pid: 99) of binary: /usr/bin/chada
Traceback (most recent call last):
  File "/usr/lib/python3.11/runpy.py", line 198, in _run_module_as_main
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
/usr/bin/chada FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-06_12:00:00
  host      : gpu
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 99)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def test_error_line_is_the_workers_error_not_torchruns_border() -> None:
    line = gpu_runs.error_line(TORCHRUN_STDERR)
    assert line.startswith("torch.distributed.DistBackendError: NCCL error")
    assert line.endswith("Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 1b000")


def test_error_line_prefers_chadas_own_message() -> None:
    chada = "[rank0]: chada pretrain: error: 2 processes on this node but 1 visible GPU(s): ranks cannot share a GPU"
    stderr = TORCHRUN_STDERR.replace("[rank1]: Last error:", chada)
    assert gpu_runs.error_line(stderr) == chada.removeprefix("[rank0]: ")
    assert gpu_runs.error_line("", "") == "no output"
    assert gpu_runs.error_line("=" * 60 + "\n") == "no output"


def test_a_timed_out_run_takes_its_whole_process_group_down(tmp_path: Path) -> None:
    """A launcher whose worker would outlive it (as torchrun's do when only the launcher is killed)."""
    pid_file = tmp_path / "worker.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    with pytest.raises(subprocess.TimeoutExpired):
        gpu_runs.run_group(["bash", "-c", script], timeout=2, cwd=tmp_path)
    worker = int(pid_file.read_text())
    for _ in range(50):  # reaped by init shortly after the kill
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {worker} still alive after the time box")


def test_cleaning_up_a_finished_group_does_not_raise() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    gpu_runs.kill_group(proc)  # the group is gone: nothing to kill, nothing raised


def test_a_sticky_cuda_error_loses_only_the_number() -> None:
    def sticky(*_args: object) -> int:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    assert gpu_model_checks.cuda_call("cuda", sticky) is None
    assert gpu_model_checks.cuda_call("cuda", lambda d: 5 * 2**20, "cuda") == 5 * 2**20
    assert gpu_model_checks.cuda_call("cpu", lambda: 1) is None  # no CUDA call on CPU at all


def test_throughput_on_cuda_n_acts_on_gpu_n(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fakes read the device argument as torch does (``_get_device_index``): ``set_device`` refuses a
    device without an index, so plain ``cuda`` must not reach it."""
    from torch.cuda._utils import _get_device_index

    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(
        torch.cuda, "set_device", lambda d: calls.append(("set_device", _get_device_index(d)))
    )
    monkeypatch.setattr(
        torch.cuda, "synchronize", lambda d=None: calls.append(("synchronize", _get_device_index(d)))
    )
    throughput.select_device("cuda:1")
    throughput._sync("cuda:1")
    throughput.select_device("cuda")  # the current device stays
    throughput.select_device("cpu")
    throughput._sync("cpu")
    assert calls == [("set_device", 1), ("synchronize", 1)]


def test_kill_tree_reaches_workers_in_sessions_of_their_own(tmp_path):
    """torchrun's workers run in their own sessions: a group kill of the launcher misses them."""
    import signal
    import time

    from proctree import descendants, kill_tree

    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(60)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert child in descendants(launcher.pid)
    kill_tree(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=10)
    for _ in range(100):  # the child is re-parented to init, which reaps it
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"worker {child} survived the kill of its launcher")
