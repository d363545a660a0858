"""gpu_check's command-line runs: subprocesses that cannot outlive their time box, torchrun's real
error line, the DDP/resume section and the ``chada embed --device cuda`` section.

Every run starts in its own session (``start_new_session=True``), so a timeout kills torchrun and all
its workers as one process group: none keeps the GPU or writes into the work folder afterwards.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proctree import kill_tree

REPO = Path(__file__).resolve().parent.parent
Row = Callable[..., None]  # gpu_check's recorder: add(section, config, status, **fields)


# ----------------------------------------------------------------------------- processes
def run_group(
    cmd: list[str], timeout: float, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose timeout kills the whole process group (torchrun and its workers).

    Raises ``subprocess.TimeoutExpired`` after the group is gone; never leaves a process behind.
    """
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    except BaseException:  # Ctrl-C or a kill of gpu_check itself: take the workers down too
        kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group and every process below it (torchrun's workers run in sessions of
    their own), SIGKILL after 10 s; errors swallowed (the group may be gone)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        kill_tree(proc.pid, sig)
        try:
            proc.communicate(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except Exception:
            return


# torchrun's summary block around the real error: borders, "key : value" lines about the launch, the
# launcher's own traceback (ChildFailedError), warnings and log-prefixed launcher lines
_NOISE = re.compile(
    r"^\s*(?:[=*\-_]{3,}|[WIE]\d{4}\s|warnings\.warn|Traceback|File \"|Failures:|Root Cause|<NO_OTHER_FAILURES>"
    r"|\[\d+\]:$|(?:time|host|rank|exitcode|error_file|traceback)\s*:|torch\.distributed\.elastic|To enable traceback"
    r"|.* FAILED$|Setting OMP_NUM_THREADS|$)"
)
_CHADA = re.compile(r"chada [\w-]+: (?:internal )?error:")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt)\b:?")
_RANK = re.compile(r"^\[(?:default|rank)\d*\]:\s*")


def error_line(stderr: str, stdout: str = "") -> str:
    """The line that says what went wrong in a failed run (torchrun's last line is its ``=====`` border).

    In order of preference, from the end: chada's one-line ``chada CMD: error: ...``; the workers'
    last exception line (``torch.distributed.DistBackendError: ...``), followed by that worker's last
    line when it adds something (NCCL's "Duplicate GPU detected ..."); the last line that is not
    torchrun's summary.
    """
    lines = [_RANK.sub("", ln.strip()) for ln in (stderr + "\n" + stdout).splitlines()]
    kept = [ln for ln in lines if not _NOISE.match(ln)]
    for ln in reversed(kept):
        if _CHADA.search(ln):
            return ln[:300]
    for i in range(len(kept) - 1, -1, -1):
        if _EXCEPTION.match(kept[i]):
            after = [ln for ln in kept[i + 1 :] if not _EXCEPTION.match(ln) and not ln.endswith(":")]
            return (kept[i] + (f" / {after[-1]}" if after else ""))[:300]
    return kept[-1][:300] if kept else "no output"


def chada_cmd() -> list[str]:
    exe = shutil.which("chada") or str(Path(sys.executable).with_name("chada"))
    if not Path(exe).exists():
        raise FileNotFoundError("the `chada` command is not on PATH: pip install -e . in this environment")
    return [exe]


def log_steps(out_dir: Path) -> list[int]:
    path = out_dir / "log.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def teacher_difference(a: Path, b: Path) -> float:
    """Largest relative difference ``max|a - b| / max|b|`` over the tensors of two exported teachers."""
    from safetensors.torch import load_file

    ta, tb = (
        load_file(str(a / "teacher" / "model.safetensors")),
        load_file(str(b / "teacher" / "model.safetensors")),
    )
    if ta.keys() != tb.keys():
        raise ValueError("the two teachers have different tensors")
    worst = 0.0
    for k, x in tb.items():
        y = ta[k].float()
        scale = float(x.float().abs().max()) or 1.0
        worst = max(worst, float((y - x.float()).abs().max()) / scale)
    return worst


# ----------------------------------------------------------------------------- DDP and resume
def prepare_data(s: dict[str, Any], left: Callable[[], float], work: Path, add: Row) -> Path | None:
    """``chada data synth`` + ``chada data shard`` into ``work``; returns the shard folder."""
    data, shards = work / "synth", work / "shards"
    t = time.perf_counter()
    for cmd in (
        chada_cmd()
        + ["data", "synth", str(data), "--n-per-assay", str(s["synth_n"]), "--size", str(s["synth_size"])],
        chada_cmd()
        + ["data", "shard", str(data / "manifest.csv"), str(shards), "--shard-size", str(s["shard_size"])],
    ):
        p = run_group(cmd, left())
        if p.returncode != 0:
            add("ddp", " ".join(cmd[1:3]), f"FAIL: {error_line(p.stderr, p.stdout)}")
            return None
    add("ddp", "data synth + shard", "ok",
        detail=f"{4 * s['synth_n']} images, shards of {s['shard_size']} ({time.perf_counter() - t:.1f} s)")  # fmt: skip
    return shards


def pretrain_overrides(s: dict[str, Any], shards: Path, procs: int) -> list[str]:
    """The DINO run every launch of the section shares (sizes from gpu_check's settings)."""
    per_gpu, steps_per_epoch = s["per_gpu"], s["steps_per_epoch"]
    over = [
        "data.manifest=null", f"data.shards={shards}", f"data.shard_samples_per_epoch={steps_per_epoch * per_gpu * procs}",
        f"optim.batch_size_per_gpu={per_gpu}", f"optim.epochs={s['total_steps'] // steps_per_epoch}",
        "optim.warmup_epochs=1", "dino.warmup_teacher_temp_epochs=1", "run.tensorboard=false", "run.progress=false",
        "run.log_every_steps=1", f"run.save_every_steps={s['total_steps'] // 2}",
    ]  # fmt: skip
    if s["device"] == "cpu":
        return over + [
            "model.name=chada_vit_test", "model.overrides.img_size=16", "head.out_dim=64", "head.hidden_dim=32",
            "head.bottleneck_dim=16", "augment.global_size=16", "augment.local_size=8", "augment.n_local=0",
            "data.num_workers=0", "run.device=cpu", "run.precision=fp32", "run.threads=1",
        ]  # fmt: skip
    return over + ["data.num_workers=2", "run.device=cuda", "run.precision=bf16"]


def launch(
    nproc: int, options: list[str], overrides: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=NPROC chada pretrain OPTIONS --config ... OVERRIDES`` (argparse takes
    no option after the KEY=VALUE overrides)."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--no-python",
    ]
    config = ["--config", str(REPO / "configs" / "idrcell100k_moyen.yaml")]
    cmd = launcher + chada_cmd() + ["pretrain"] + options + config + overrides
    return run_group(cmd, timeout, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


class GpuMemoryPoller:
    """Peak GPU memory per process id, polled from nvidia-smi every 0.5 s (nothing without nvidia-smi)."""

    def __init__(self) -> None:
        self.peak: dict[str, float] = {}
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                out = subprocess.run(
                    ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5,
                ).stdout  # fmt: skip
                for line in out.strip().splitlines():
                    pid, mb = (x.strip() for x in line.split(","))
                    self.peak[pid] = max(self.peak.get(pid, 0.0), float(mb))
            self._stop.wait(0.5)

    def __enter__(self) -> GpuMemoryPoller:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=10)

    def peak_mb(self) -> float | None:
        return max(self.peak.values()) if self.peak else None
