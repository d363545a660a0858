"""gpu_check's sections that run the ``chada`` command: DDP and resume, ``chada embed --device cuda``,
and a varlen DINO run with drop path and ``run.compile=true``.

"Exact resume" on GPUs: on CPU a resumed run's teacher equals an uninterrupted run's bit for bit
(tolerance 0 in the dry run); on CUDA the FlashAttention/varlen backward passes accumulate in a
non-deterministic order, so two runs of the same steps already differ in the last bits and the
difference grows with every step. The resumed teacher is compared with the uninterrupted one within
``RESUME_TOL_CUDA`` (largest relative difference of any tensor).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from gpu_runs import (
    GpuMemoryPoller,
    chada_cmd,
    error_line,
    launch,
    log_steps,
    prepare_data,
    pretrain_overrides,
    run_group,
    teacher_difference,
)

Row = Callable[..., None]
# max |resumed - uninterrupted| / max |uninterrupted| over the teacher's tensors after a dozen steps
RESUME_TOL_CUDA = 1e-3
EMBED_MIN_COSINE = 0.999  # fp32 CUDA embeddings against the CPU's, per image


def _run_row(
    add: Row, label: str, out: Path, nproc: int, steps: int, left: Callable[[], float], s: dict[str, Any],
    overrides: list[str], options: list[str] | None = None, env: dict[str, str] | None = None, first: int = 1,
) -> bool:  # fmt: skip
    """One ``chada pretrain`` launch to ``steps`` into ``out``; a row says whether its log reached it."""
    if left() <= 5:
        add("ddp", label, "skipped (time box)")
        return False
    t0 = time.perf_counter()
    with GpuMemoryPoller() as mem:
        try:
            p = launch(
                nproc,
                options or [],
                overrides + [f"run.output_dir={out}", f"run.max_steps={steps}"],
                left(),
                env,
            )
        except Exception as exc:  # TimeoutExpired included: the process group is already gone
            add("ddp", label, f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            return False
    steps_logged = log_steps(out)
    good = p.returncode == 0 and bool(steps_logged) and steps_logged[-1] == steps
    if first > 1:  # a resume keeps the first run's rows and continues after them
        good = good and steps_logged[: first - 1] == list(range(1, first))
    exported = (out / "teacher" / "model.safetensors").exists()
    detail = f"exit {p.returncode}, {time.perf_counter() - t0:.1f} s" + (
        "; teacher exported" if exported else ""
    )
    span = f"steps {steps_logged[0]}..{steps_logged[-1]}" if steps_logged else "no steps logged"
    add("ddp", f"{label}: {span}", "PASS" if good else f"FAIL: {error_line(p.stderr, p.stdout)}",
        peak_mb=mem.peak_mb(), detail=detail, stderr_tail=(p.stderr or "")[-2000:])  # fmt: skip
    return good


def _other_count(
    s: dict[str, Any], procs: int, n_gpus: int
) -> tuple[str, int, list[str], dict[str, str]] | None:
    """How to resume with another number of GPUs here: (label, processes, extra overrides, env)."""
    if s["device"] == "cpu":
        return f"resume with 1 process (saved by {procs})", 1, [], {}
    if n_gpus >= 2:
        return f"resume on 1 visible GPU (saved by {procs})", 1, [], {"CUDA_VISIBLE_DEVICES": "0"}
    # One GPU: the other count is 0, a checkpoint with CUDA RNG state resumed where no GPU is visible.
    cpu = ["run.device=cpu", "run.precision=fp32", "optim.batch_size_per_gpu=4", "data.num_workers=0"]
    return "resume with no visible GPU (saved with 1)", 1, cpu, {"CUDA_VISIBLE_DEVICES": ""}


def ddp(s: dict[str, Any], left: Callable[[], float], work: Path, add: Row) -> Path | None:
    """Uninterrupted vs interrupted+resumed runs (teachers compared), and a resume with another number
    of GPUs. Returns the uninterrupted run's folder (its exported teacher feeds the embed section)."""
    shards = prepare_data(s, left, work, add)
    if shards is None:
        return None
    n_gpus = torch.cuda.device_count() if s["device"] != "cpu" else 0
    procs = 2
    if s["device"] != "cpu" and n_gpus < 2:
        procs = 1
        add(
            "ddp",
            "2 processes",
            "skipped",
            detail="one GPU: two ranks cannot share it (chada refuses them); 1 process below",
        )
    over = pretrain_overrides(s, shards, procs)
    T, H = s["total_steps"], s["total_steps"] // 2
    backend = "gloo" if s["device"] == "cpu" else "nccl"
    whole, parts = work / "run_whole", work / "run_resumed"
    ok_whole = _run_row(add, f"{procs} x {backend}, uninterrupted", whole, procs, T, left, s, over)
    if not _run_row(add, f"{procs} x {backend}, interrupted", parts, procs, H, left, s, over):
        return whole if ok_whole else None
    saved = work / "run_saved_half"
    shutil.copytree(parts, saved, dirs_exist_ok=True)
    if (
        _run_row(
            add, f"{procs} x {backend}, --resume", parts, procs, T, left, s, over, ["--resume"], first=H + 1
        )
        and ok_whole
    ):
        tol = 0.0 if s["device"] == "cpu" else RESUME_TOL_CUDA
        diff = teacher_difference(parts, whole)
        add("ddp", "resumed vs uninterrupted teacher", "PASS" if diff <= tol else "FAIL", teacher_rel_diff=diff,
            detail=f"max relative difference {diff:.2e} (tolerance {tol:g}: bit-exact on CPU, "
                   "within tolerance on CUDA, whose flash/varlen backward is not deterministic)")  # fmt: skip
    other = _other_count(s, procs, n_gpus)
    if other is not None:
        label, nproc, extra, env = other
        allow = ["--resume-allow-changes", ",".join(["world_size"] + [e.split("=")[0] for e in extra])]
        _run_row(
            add, label, saved, nproc, H + 1, left, s, over + extra, ["--resume", *allow], env, first=H + 1
        )
    return whole if ok_whole else None


# ----------------------------------------------------------------------------- embed
def _min_cosine(a: Path, b: Path) -> float:
    from chada.encode.store import load_embeddings

    ea, eb = load_embeddings(a), load_embeddings(b)
    x, y = torch.as_tensor(ea.features["cls"]), torch.as_tensor(eb.features["cls"])
    return float(torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=1).min())


def embed(s: dict[str, Any], left: Callable[[], float], work: Path, run_dir: Path | None, add: Row) -> None:
    """``chada embed --device cuda`` and ``--device cuda:N`` (the last GPU) of the run's exported teacher
    (a registered model with random weights if the DDP section exported none), against ``--device cpu``."""
    manifest = work / "synth" / "manifest.csv"
    if not manifest.exists():
        add("embed", "manifest", "skipped: the ddp section made no data")
        return
    teacher = (
        run_dir / "teacher"
        if run_dir is not None and (run_dir / "teacher" / "config.json").exists()
        else None
    )
    model = str(teacher) if teacher else "chada_vit_test" if s["device"] == "cpu" else s["model"]
    n = torch.cuda.device_count() if s["device"] != "cpu" else 0
    devices = ["cpu"] + (["cuda", f"cuda:{n - 1}"] if n else [])
    outs: dict[str, Path] = {}
    for dev in devices:
        if left() <= 3:
            add("embed", f"--device {dev}", "skipped (time box)")
            continue
        out = work / f"embed_{dev.replace(':', '_')}.npz"
        cmd = chada_cmd() + ["embed", "--model", model, "--manifest", str(manifest), "--out", str(out),
                             "--device", dev, "--precision", "fp32", "--batch-size", "16", "--quiet"]  # fmt: skip
        t0 = time.perf_counter()
        try:
            p = run_group(cmd, left())
        except Exception as exc:
            add("embed", f"--device {dev}", f"FAIL: {type(exc).__name__}")
            continue
        wall = time.perf_counter() - t0
        if p.returncode != 0 or not out.exists():
            add(
                "embed",
                f"--device {dev}",
                f"FAIL: {error_line(p.stderr, p.stdout)}",
                detail=f"exit {p.returncode}",
            )
            continue
        outs[dev] = out
        cos = _min_cosine(out, outs["cpu"]) if "cpu" in outs and dev != "cpu" else None
        ok = cos is None or cos >= EMBED_MIN_COSINE
        add("embed", f"--device {dev}" + (" (reference)" if dev == "cpu" else ""), "PASS" if ok else "FAIL",
            cls_cosine=cos, detail=f"{'teacher of the ddp run' if teacher else model}, fp32, {wall:.1f} s"
            + (f"; min CLS cosine to CPU {cos:.6f} (>= {EMBED_MIN_COSINE})" if cos is not None else ""))  # fmt: skip


# ----------------------------------------------------------------------------- varlen + drop path
def varlen_training(s: dict[str, Any], left: Callable[[], float], work: Path, add: Row) -> None:
    """A short 1-process DINO run with ``model.overrides.attention=varlen``, drop path 0.1 and, on CUDA,
    ``run.compile=true`` (the trainer's own per-block compile), to its teacher export."""
    shards = work / "shards"
    if not shards.exists():
        add("train", "varlen + drop path", "skipped: the ddp section made no shards")
        return
    steps = s["total_steps"] // 2
    over = pretrain_overrides(s, shards, 1) + ["model.overrides.attention=varlen", "model.drop_path_rate=0.1"]
    over += ["run.compile=false"] if s["device"] == "cpu" else ["run.compile=true"]
    label = "varlen + drop path 0.1" + (", run.compile=true" if s["device"] != "cpu" else " (dry run: eager)")
    out = work / "run_varlen"
    _run_row(lambda _s, *a, **k: add("train", *a, **k), label, out, 1, steps, left, s, over)
