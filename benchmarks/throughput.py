"""Throughput and peak memory of ChAda-ViT: padded (paper) vs packed vs varlen attention, fp32 vs bf16.

Usage (from the repository root)::

    python benchmarks/throughput.py --model chada_vit_moyen --image-size 224 \
        --batch-size 16 --train-batch-size 4 --threads 2 --repeats 2 --dtypes float32,bfloat16

For every (mode, mix, attention, dtype) configuration a FRESH subprocess builds the model and the batch,
runs one step to measure peak memory, then ``--warmup`` more and ``--repeats`` timed steps. Modes:

- ``infer``: ``model.forward_features(batch)`` under ``torch.inference_mode()``, model in eval mode;
- ``train``: forward + backward of ``cls.sum() + patch_tokens.sum()`` in train mode (no optimizer
  step; gradients are freed between steps so their memory is part of every step).

``bfloat16`` runs under ``torch.autocast`` (:func:`chada.models.precision.autocast`, what the
precision helper selects), so inference on CPU takes the explicit bf16 attention of
:func:`chada.models.layers.attention`. Rows of both dtypes sit side by side; the ``x fp32`` column
compares each bf16 row with the fp32 row of the same (mode, mix, attention). The machine line names
the CPU model and its ``avx512_bf16`` / ``amx_bf16`` flags.

Peak memory is the increase above "model + input batch already allocated":

- CPU: Linux ``VmHWM`` (peak resident set size) after resetting it through
  ``/proc/self/clear_refs`` just before the step, minus ``VmRSS`` just before the step; measured on
  the first step of a fresh process so no allocator cache from an earlier step hides anything.
  (``tracemalloc`` cannot see torch's allocations; RSS does.) Falls back to ``ru_maxrss`` of the
  fresh process when clear_refs is not writable.
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the step.

Useful FLOPs are counted analytically for the REAL tokens only, the same number for both paths
(the padded path executes more: that waste is what packing removes). Per image with C channels,
N = (H/p)(W/p) patches, L = 1 + C*N tokens, width D, MLP hidden Hd, depth d, patch p::

    patch embed : 2 * C*N * p*p * D
    per block   : 2 * L * (3D*D + D*D + 2*D*Hd)     qkv, out-proj, MLP (multiply-adds x 2)
                + 4 * L*L * D                        q@k^T and attn@v over all heads
    forward     = patch embed + d * per block        (norms, softmax, GELU ignored: < 2%)
    train step  = 3 * forward                        (backward ~ 2x forward)

The achieved GFLOP/s is set against a plain ``torch.matmul`` peak (square fp32/bf16 matmul, best of
a few runs) measured in the same invocation with the same thread count.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

MIXES = ("all1", "all3", "all10", "uniform", "idrcell")
# The IDRCell100k-like batch (mean 2.94 channels), sorted.
IDRCELL_16 = [1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 7]


# --------------------------------------------------------------------------- workload
def mix_counts(mix: str, batch_size: int, max_channels: int, seed: int = 0) -> list[int]:
    """Channel count of every image of a batch for a named mix (deterministic, shuffled)."""
    rng = random.Random(seed)
    if mix.startswith("all"):
        c = int(mix[3:])
        if not 1 <= c <= max_channels:
            raise ValueError(f"mix {mix!r}: C must lie in 1..{max_channels}")
        return [c] * batch_size
    if mix == "uniform":
        return [rng.randint(1, max_channels) for _ in range(batch_size)]
    if mix == "idrcell":
        # Evenly spaced quantiles of the 16-image reference mix, so a smaller/larger batch keeps
        # its shape (B=16 gives exactly the list).
        counts = [IDRCELL_16[int((i + 0.5) * len(IDRCELL_16) / batch_size)] for i in range(batch_size)]
        counts = [min(c, max_channels) for c in counts]
        rng.shuffle(counts)
        return counts
    raise ValueError(f"unknown mix {mix!r}; known: {', '.join(MIXES)} or allK")


def model_flops(counts: list[int], cfg: Any, image_size: int) -> float:
    """Useful forward FLOPs of a batch (real tokens only): see the module docstring."""
    p, D, Hd, depth = cfg.patch_size, cfg.embed_dim, cfg.hidden_dim, cfg.depth
    N = (image_size // p) ** 2
    total = 0.0
    for C in counts:
        L = 1 + C * N
        embed = 2.0 * C * N * p * p * D
        block = 2.0 * L * (4 * D * D + 2 * D * Hd) + 4.0 * L * L * D
        total += embed + depth * block
    return total


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an ``n x n @ n x n`` matmul on this device/dtype."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def select_device(device: str) -> None:
    """Make ``device`` the current CUDA device: ``synchronize`` and the memory statistics without an
    argument act on the current device, so ``--device cuda:1`` would otherwise time kernel launches
    on GPU 1 while waiting for GPU 0 and read GPU 0's memory. Plain ``cuda`` keeps the current device
    (``set_device`` refuses a device without an index)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)


# --------------------------------------------------------------------------- memory
def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- one configuration
def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this (fresh) process. Returns a JSON-able dict."""
    import resource

    from chada.models import ChannelBatch, create_model
    from chada.models.precision import autocast as precision_autocast

    device, mode, attention = spec["device"], spec["mode"], spec["attention"]
    select_device(device)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    dtype = torch.bfloat16 if spec["dtype"] == "bfloat16" else torch.float32
    model = create_model(spec["model"], attention=attention).to(device)
    model.train(mode == "train")
    counts = spec["counts"]
    S = spec["image_size"]
    batch = ChannelBatch(torch.randn(sum(counts), S, S), torch.tensor(counts)).to(
        device
    )  # checked on the CPU
    if spec[
        "compile"
    ]:  # as the trainer's run.compile=true: per block (a whole-model compile fails, see there)
        from chada.ssl.trainer import compile_blocks

        compile_blocks(model)
    fwd = model.forward_features
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    def autocast():  # a fresh context per use (generator-based context managers are single-use)
        return precision_autocast(dtype, device)

    def step() -> None:
        if mode == "infer":
            with torch.inference_mode(), autocast():
                out = fwd(batch)
            del out
        else:
            model.zero_grad(set_to_none=True)
            with autocast():
                out = fwd(batch)
                loss = out.cls.float().sum() + out.patch_tokens.float().sum()
            loss.backward()
            del out, loss
        _sync(device)

    # Load the kernels/thread pools once on a one-channel image (a few MB) so the measured step's
    # peak is the workload's, not library initialisation; the measured step is still the first of
    # this size, so no allocator cache from an earlier identical step hides anything.
    tiny = ChannelBatch(torch.randn(1, S, S), torch.tensor([1])).to(device)
    with torch.inference_mode(), autocast():
        fwd(tiny)
    del tiny
    # Peak memory: first full step, fresh process.
    method = ""
    if dev_type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        peak_bytes = torch.cuda.max_memory_allocated(device) - base
        method = "cuda.max_memory_allocated"
    else:
        base_kb = _proc_status_kb("VmRSS")
        if base_kb is not None and _reset_peak_rss():
            step()
            peak_bytes = ((_proc_status_kb("VmHWM") or 0) - base_kb) * 1024
            method = "VmHWM-VmRSS"
        else:
            base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            step()
            peak_bytes = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) * 1024
            method = "ru_maxrss delta"

    for _ in range(spec["warmup"]):
        step()
    times, cpu_times = [], []
    for _ in range(spec["repeats"]):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    sec = statistics.median(times)
    flops = model_flops(counts, model.config, S) * (3.0 if mode == "train" else 1.0)
    return {
        **{k: spec[k] for k in ("mix", "mode", "attention", "dtype")},
        "batch_size": len(counts),
        "mean_channels": sum(counts) / len(counts),
        "seconds": sec,
        "times": times,
        "cpu_seconds": statistics.median(cpu_times),
        "images_per_s": len(counts) / sec,
        "peak_mb": peak_bytes / 2**20,
        "memory_method": method,
        "gflops": flops / 1e9,
        "gflop_per_s": flops / sec / 1e9,
    }


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"worker failed for {spec['mode']}/{spec['mix']}/{spec['attention']}/{spec['dtype']}:\n{proc.stderr}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report
def machine_info(args: argparse.Namespace) -> dict[str, str]:
    from chada.models.precision import cpu_model_name, read_cpu_flags

    flags = read_cpu_flags()
    bf16_flags = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx512_bf16", "amx_bf16"))
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{cpu_model_name()}, {os.cpu_count()} logical CPUs ({bf16_flags})",
        "torch": torch.__version__,
        "threads": str(args.threads),
        "python": platform.python_version(),
        "load": "n/a",
    }
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="chada_vit_moyen")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16, help="inference batch size")
    ap.add_argument(
        "--train-batch-size", type=int, default=None, help="training batch size (default: --batch-size)"
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument(
        "--dtypes", default="float32,bfloat16", help="comma list of float32,bfloat16 (bfloat16 = autocast)"
    )
    ap.add_argument("--mixes", default=",".join(MIXES), help=f"comma list of {MIXES} or allK")
    ap.add_argument("--modes", default="infer,train", help="comma list of infer,train")
    ap.add_argument("--attentions", default="padded,packed", help="comma list of padded,packed,varlen")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (median)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps after the memory step")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--compile", action="store_true", help="compile every block as run.compile=true does")
    ap.add_argument("--seed", type=int, default=0, help="seed of the uniform/idrcell mixes")
    ap.add_argument("--json", type=Path, default=None, help="also save raw results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_one(json.loads(args.worker))))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    from chada.models import create_model

    select_device(args.device)
    torch.set_num_threads(args.threads)
    cfg = create_model(args.model).config
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in ("float32", "bfloat16"):
            raise SystemExit(f"unknown dtype {d!r}; use float32 and/or bfloat16")
    peaks = {
        d: matmul_peak(args.device, torch.bfloat16 if d == "bfloat16" else torch.float32) for d in dtypes
    }
    info = machine_info(args)
    mixes = [m.strip() for m in args.mixes.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    attentions = [a.strip() for a in args.attentions.split(",") if a.strip()]
    for m in modes:
        if m not in ("infer", "train"):
            raise SystemExit(f"unknown mode {m!r}")
    configs = []
    for mode in modes:
        bs = args.batch_size if mode == "infer" else (args.train_batch_size or args.batch_size)
        for mix in mixes:
            counts = mix_counts(mix, bs, cfg.max_channels, args.seed)
            for att in attentions:
                for dt in dtypes:
                    configs.append(dict(
                        model=args.model, image_size=args.image_size, device=args.device, dtype=dt, mode=mode,
                        mix=mix, attention=att, counts=counts, repeats=args.repeats, warmup=args.warmup,
                        threads=args.threads, compile=args.compile,
                    ))  # fmt: skip
    print(f"matmul peaks: {peaks}; {len(configs)} configurations", file=sys.stderr)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for i, spec in enumerate(configs, 1):
        t = time.perf_counter()
        r = _spawn(spec)
        rows.append(r)
        print(
            f"[{i}/{len(configs)}] {r['mode']:5s} {r['mix']:8s} {r['attention']:6s} {r['dtype']:8s} "
            f"{r['images_per_s']:8.2f} img/s  {r['peak_mb']:7.0f} MB  ({time.perf_counter() - t:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info["load"] = f"{load_start:.1f} at start, {load_end:.1f} at end"
    from throughput_report import render

    table = render(rows, peaks, info, args)
    print(table)
    if args.json is not None:
        payload = {"machine": info, "matmul_gflop_per_s": peaks, "argv": sys.argv, "rows": rows}
        _atomic_write(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
