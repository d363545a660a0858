"""One command for the first person with a GPU: parity, throughput grid, 2-process DINO, peak memory.

Usage (from the repository root, with chada installed in the active environment)::

    python benchmarks/gpu_check.py                 # on a CUDA machine: ~5-8 minutes on one H100/H200
    python benchmarks/gpu_check.py --dry-run       # on CPU: the same code paths, test model, tiny sizes

Paste what it prints (one markdown table plus a header line); the raw results are in
``--out`` (default ``gpu_check_out/gpu_check.json``). Without CUDA and without ``--dry-run`` it
prints one line and exits 0.

Sections, each time-boxed so the real run fits in 8 minutes (``--budget``, default 450 s):

1. ``parity``: packed vs padded and varlen vs padded on CUDA, fp32 and bf16 (autocast), every
   layer's real tokens (max |diff|) and the CLS cosine, chada_vit_moyen at 224 px on a mixed batch;
   the row says which varlen kernel ran (``varlen_attn`` or the grouped fallback).
2. ``grid``: images/s and peak memory of ``forward_features`` (infer) and forward+backward (train)
   for mixes idrcell/all1/all10, fp32/bf16, attention packed/padded/varlen, torch.compile off; and
   compile on for the idrcell mix (packed and varlen, each row in its own process with a timeout).
3. ``ddp``: ``chada data synth`` + ``chada data shard``, then
   ``torchrun --nproc_per_node=2 --no-python chada pretrain --config configs/idrcell100k_moyen.yaml``
   (NCCL) for 15 steps from the shards, then ``--resume`` to step 30; peak GPU memory per process
   from nvidia-smi. With one GPU NCCL usually refuses two ranks on one device: the row then says so
   and a single-process CUDA run with the same resume takes its place.

``--dry-run`` runs every section on CPU with chada_vit_test at 32 px (gloo instead of NCCL, 4
DINO steps with a resume after 2; compile rows are skipped: inductor needs minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import mix_counts, model_flops  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MIXES = ("idrcell", "all1", "all10")
ATTENTIONS = ("packed", "padded", "varlen")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------- settings
def settings(dry: bool) -> dict[str, Any]:
    """Sizes of every section: the real GPU run, or the CPU dry run."""
    if dry:
        return dict(
            device="cpu", model="chada_vit_test", image_size=32, parity_counts=[1, 3, 10, 2],
            infer_bs=4, train_bs=2, warmup=1, repeats=2, compile_rows=False,
            synth_n=8, synth_size=32, shard_size=4, ddp_backend="gloo",
        )  # fmt: skip
    return dict(
        device="cuda", model="chada_vit_moyen", image_size=224, parity_counts=[1, 3, 10, 2, 5, 1],
        infer_bs=64, train_bs=32, warmup=3, repeats=10, compile_rows=True,
        synth_n=48, synth_size=224, shard_size=16, ddp_backend="nccl",
    )  # fmt: skip


class Deadline:
    """A time box: ``left()`` seconds remain; sections skip what no longer fits."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0] if isinstance(exc, str) else f"{type(exc).__name__}: {text.splitlines()[0]}"
    return line[:200]


def _row(section: str, config: str, status: str, **kw: Any) -> dict[str, Any]:
    return dict(section=section, config=config, status=status, **kw)


# ----------------------------------------------------------------------------- environment
def environment(s: dict[str, Any]) -> dict[str, Any]:
    from chada.models.precision import cpu_bf16_feature, cpu_model_name, read_cpu_flags

    flags = read_cpu_flags()
    env: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": cpu_model_name(),
        "cpu_bf16": {f: f in flags for f in ("avx512_bf16", "amx_bf16")},
        "cpu_bf16_feature": cpu_bf16_feature(),
        "dry_run": s["device"] == "cpu",
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
        with contextlib.suppress(Exception):  # int in some builds, tuple in others
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return env


# ----------------------------------------------------------------------------- 1. parity
def _perturbed_model(name: str, device: str) -> torch.nn.Module:
    from chada.models import create_model

    torch.manual_seed(0)
    model = create_model(name)
    with torch.no_grad():  # non-trivial embeddings/biases so a wrong slot or leaked padding shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.to(device).eval()


def parity(s: dict[str, Any], deadline: Deadline) -> list[dict[str, Any]]:
    from chada.models import ChannelBatch
    from chada.models import layers as chada_layers
    from chada.models.precision import autocast

    device, rows = s["device"], []
    model = _perturbed_model(s["model"], device)
    g = torch.Generator().manual_seed(0)
    S = s["image_size"]
    images = [torch.randn(c, S, S, generator=g) for c in s["parity_counts"]]
    batch = ChannelBatch.from_images(images).to(device)
    counts = batch.counts.tolist()
    tol = {"fp32": 1e-4, "bf16": None}  # bf16: kernels round differently; judged by the CLS cosine
    ref32 = None
    for dname, dtype in DTYPES.items():
        outs, peaks = {}, {}
        for mode in ("padded", "packed", "varlen"):
            if deadline.left() <= 0:
                rows.append(_row("parity", f"{dname} {mode}", "skipped (time box)"))
                continue
            model.set_attention(mode)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            try:
                with torch.inference_mode(), autocast(dtype, device):
                    outs[mode] = model.forward_features(batch, return_hidden_states=True)
                _sync(device)
            except Exception as exc:  # report and go on: one broken kernel must not hide the rest
                rows.append(_row("parity", f"{dname} {mode}", f"error: {_first_line(exc)}"))
            peaks[mode] = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
        if "padded" not in outs:
            continue
        pd = outs["padded"]
        if dname == "fp32":
            ref32 = pd.cls.float()
        N = pd.grid[0] * pd.grid[1]
        real = torch.cat([torch.ones_like(pd.channel_mask[:, :1]), pd.channel_mask.repeat_interleave(N, dim=1)], dim=1)
        for mode in ("packed", "varlen"):
            if mode not in outs:
                continue
            o = outs[mode]
            layer_diff = [float((a.float() - b.float())[real].abs().max()) for a, b in zip(o.hidden_states, pd.hidden_states)]
            final = float((o.patch_tokens.float() - pd.patch_tokens.float()).abs().max())
            cos = float(F.cosine_similarity(o.cls.float(), pd.cls.float()).min())
            cos32 = float(F.cosine_similarity(o.cls.float(), ref32).min()) if ref32 is not None else None
            worst = max(layer_diff + [final])
            ok = worst < tol[dname] if tol[dname] is not None else (cos >= 0.999 and (cos32 is None or cos32 >= 0.999))
            kernel = ""
            if mode == "varlen":
                hd = model.config.embed_dim // model.config.num_heads
                probe = torch.empty(1, 1, hd, device=device, dtype=dtype)
                kernel = "varlen_attn" if chada_layers._varlen_kernel_available(probe) else "grouped SDPA fallback"
            detail = (
                f"max |{mode}-padded| over {len(layer_diff)} layers {worst:.2e}"
                + (f" (tol {tol[dname]:g})" if tol[dname] else "")
                + f"; CLS cos to padded {cos:.6f}"
                + (f", to fp32 padded {cos32:.6f}" if dname == "bf16" and cos32 is not None else "")
                + (f"; kernel {kernel}" if kernel else "")
            )
            rows.append(
                _row("parity", f"{dname} {mode} vs padded, C={counts}", "PASS" if ok else "FAIL",
                     peak_mb=peaks[mode], detail=detail, layer_max_abs_diff=layer_diff, cls_cosine=cos)
            )  # fmt: skip
    model.set_attention("packed")
    return rows


# ----------------------------------------------------------------------------- 2. throughput grid
def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Images/s and peak memory of one configuration, in this process."""
    from chada.models import ChannelBatch, create_model
    from chada.models.precision import autocast

    device, mode = spec["device"], spec["mode"]
    dtype = DTYPES[spec["dtype"]]
    torch.manual_seed(0)
    model = create_model(spec["model"], attention=spec["attention"]).to(device).train(mode == "train")
    counts, S = spec["counts"], spec["image_size"]
    batch = ChannelBatch(torch.randn(sum(counts), S, S, device=device), torch.tensor(counts, device=device))
    fwd = torch.compile(model.forward_features, dynamic=True) if spec["compile"] else model.forward_features

    def step() -> None:
        if mode == "infer":
            with torch.inference_mode(), autocast(dtype, device):
                fwd(batch)
        else:
            model.zero_grad(set_to_none=True)
            with autocast(dtype, device):
                out = fwd(batch)
                loss = out.cls.float().sum() + out.patch_tokens.float().sum()
            loss.backward()
        _sync(device)

    t0 = time.perf_counter()
    step()  # first step: kernels, autotuning, compilation
    first_s = time.perf_counter() - t0
    for _ in range(spec["warmup"]):
        step()
    cuda = device.startswith("cuda")
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    flops = model_flops(counts, model.config, S) * (3.0 if mode == "train" else 1.0)
    return {
        "images_per_s": len(counts) / sec,
        "seconds": sec,
        "first_step_s": first_s,
        "tflop_per_s": flops / sec / 1e12,
        "peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None,
    }


def _grid_specs(s: dict[str, Any]) -> list[dict[str, Any]]:
    from chada.models import create_model

    c_max = create_model(s["model"]).config.max_channels
    specs = []
    for mode in ("infer", "train"):
        bs = s["infer_bs"] if mode == "infer" else s["train_bs"]
        for mix in MIXES:
            counts = mix_counts(mix, bs, c_max)
            for dname in DTYPES:
                for att in ATTENTIONS:
                    specs.append(dict(mode=mode, mix=mix, dtype=dname, attention=att, compile=False, counts=counts))
    if s["compile_rows"]:  # most wanted first: the time box may cut the last ones
        for mode in ("infer", "train"):
            bs = s["infer_bs"] if mode == "infer" else s["train_bs"]
            counts = mix_counts("idrcell", bs, c_max)
            for dname in ("bf16", "fp32"):
                for att in ("packed", "varlen"):
                    specs.append(dict(mode=mode, mix="idrcell", dtype=dname, attention=att, compile=True, counts=counts))
    for sp in specs:
        sp.update(device=s["device"], model=s["model"], image_size=s["image_size"], warmup=s["warmup"], repeats=s["repeats"])
    return specs


def _spec_name(sp: dict[str, Any]) -> str:
    return f"{sp['mode']} {sp['mix']} {sp['dtype']} {sp['attention']}" + (" compile" if sp["compile"] else "")


def _measure_in_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["worker failed"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def grid(s: dict[str, Any], deadline: Deadline, compile_timeout: float) -> list[dict[str, Any]]:
    rows = []
    for sp in _grid_specs(s):
        name = _spec_name(sp)
        left = deadline.left()
        if left <= (compile_timeout if sp["compile"] else 0):
            rows.append(_row("grid", name, "skipped (time box)"))
            continue
        try:
            if sp["compile"]:
                r = _measure_in_subprocess(sp, timeout=min(compile_timeout, left))
            else:
                r = measure(sp)
            status = "ok"
        except subprocess.TimeoutExpired:
            rows.append(_row("grid", name, f"timeout after {min(compile_timeout, left):.0f} s"))
            continue
        except Exception as exc:
            rows.append(_row("grid", name, f"error: {_first_line(exc)}"))
            continue
        finally:
            if s["device"].startswith("cuda"):
                torch.cuda.empty_cache()
        mean_c = sum(sp["counts"]) / len(sp["counts"])
        rows.append(
            _row("grid", name, status, **r,
                 detail=f"B={len(sp['counts'])}, mean C {mean_c:.2f}; {r['tflop_per_s']:.3g} TFLOP/s useful; "
                        f"first step {r['first_step_s']:.1f} s")
        )  # fmt: skip
        print(f"  grid {name}: {r['images_per_s']:.1f} img/s", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- 3. DDP DINO
class GpuMemoryPoller:
    """Peak GPU memory per process id, polled from nvidia-smi every 0.5 s (None without nvidia-smi)."""

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


def _chada_cmd() -> list[str]:
    exe = shutil.which("chada") or str(Path(sys.executable).with_name("chada"))
    if not Path(exe).exists():
        raise FileNotFoundError("the `chada` command is not on PATH: pip install -e . in this environment")
    return [exe]


def _run(cmd: list[str], timeout: float, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1), cwd=cwd, env=env)


def _log_steps(out_dir: Path) -> list[int]:
    import csv

    path = out_dir / "log.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def ddp(s: dict[str, Any], deadline: Deadline, work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    chada = _chada_cmd()
    data = work / "synth"
    shards = work / "shards"
    t = time.perf_counter()
    for cmd in (
        chada + ["data", "synth", str(data), "--n-per-assay", str(s["synth_n"]), "--size", str(s["synth_size"])],
        chada + ["data", "shard", str(data / "manifest.csv"), str(shards), "--shard-size", str(s["shard_size"])],
    ):
        p = _run(cmd, deadline.left(), REPO)
        if p.returncode != 0:
            rows.append(_row("ddp", " ".join(cmd[1:3]), f"error: {_first_line((p.stderr or p.stdout).strip().splitlines()[-1] if (p.stderr or p.stdout).strip() else 'failed')}"))
            return rows
    n_images = 4 * s["synth_n"]
    rows.append(_row("ddp", "data synth + shard", "ok", detail=f"{n_images} images, shards of {s['shard_size']} ({time.perf_counter() - t:.1f} s)"))

    procs = 2
    per_gpu = 4 if s["device"] == "cpu" else 32
    steps_per_epoch = 2 if s["device"] == "cpu" else 10
    total, half = (4, 2) if s["device"] == "cpu" else (30, 15)
    epochs = total // steps_per_epoch
    common = [
        "data.manifest=null", f"data.shards={shards}", f"data.shard_samples_per_epoch={steps_per_epoch * per_gpu * procs}",
        f"optim.batch_size_per_gpu={per_gpu}", f"optim.epochs={epochs}", "optim.warmup_epochs=1",
        "dino.warmup_teacher_temp_epochs=1", "run.tensorboard=false", "run.progress=false",
        "run.log_every_steps=1", f"run.save_every_steps={half}",
    ]  # fmt: skip
    if s["device"] == "cpu":
        common += [
            "model.name=chada_vit_test", "model.overrides.img_size=16", "head.out_dim=64", "head.hidden_dim=32",
            "head.bottleneck_dim=16", "augment.global_size=16", "augment.local_size=8", "augment.n_local=0",
            "data.num_workers=0", "run.device=cpu", "run.precision=fp32", "run.threads=1",
        ]  # fmt: skip
    else:
        common += ["data.num_workers=2", "run.device=cuda", "run.precision=bf16"]

    def attempt(nproc: int, label: str) -> bool:
        out = work / f"run_{label}"
        shutil.rmtree(out, ignore_errors=True)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "--no-python"]
        config = ["--config", str(REPO / "configs" / "idrcell100k_moyen.yaml")]
        overrides = common + [f"run.output_dir={out}"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        ok = True
        for step_to, extra in ((half, []), (total, ["--resume"])):
            if deadline.left() <= 5:
                rows.append(_row("ddp", f"{label}: steps -> {step_to}", "skipped (time box)"))
                return False
            t0 = time.perf_counter()
            with GpuMemoryPoller() as mem:
                try:
                    # options before the KEY=VALUE overrides: argparse takes no option after them
                    cmd = launcher + chada + ["pretrain"] + extra + config + overrides + [f"run.max_steps={step_to}"]
                    p = _run(cmd, deadline.left(), REPO, env)
                except subprocess.TimeoutExpired:
                    rows.append(_row("ddp", f"{label}: steps -> {step_to}", "timeout (time box)"))
                    return False
            wall = time.perf_counter() - t0
            steps = _log_steps(out)
            good = p.returncode == 0 and steps and steps[-1] == step_to
            if extra:  # the resumed run kept the first run's rows and continued after them
                good = good and steps[:half] == list(range(1, half + 1))
            peak = max(mem.peak.values()) if mem.peak else None
            if s["device"] == "cpu":
                peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest child's peak RSS, MB
            tail = "" if good else _first_line(((p.stderr or "") + (p.stdout or "")).strip().splitlines()[-1] if (p.stderr or p.stdout).strip() else "no output")
            rows.append(
                _row("ddp", f"{label}: {'--resume ' if extra else ''}steps {steps[0] if steps else '-'}..{steps[-1] if steps else '-'}",
                     "PASS" if good else f"FAIL: {tail}", peak_mb=peak,
                     detail=f"exit {p.returncode}, {wall:.1f} s" + ("; teacher exported" if (out / 'teacher' / 'model.safetensors').exists() else ""),
                     stderr_tail=(p.stderr or "")[-2000:])
            )  # fmt: skip
            ok = ok and bool(good)
            if not good:
                return False
        return ok

    backend = s["ddp_backend"]
    if attempt(procs, f"{procs} processes, {backend}"):
        return rows
    if s["device"].startswith("cuda") and torch.cuda.device_count() < 2:
        rows.append(_row("ddp", "note", "info", detail="one GPU: NCCL refuses two ranks on one device (see the FAIL row); "
                                                      "single-process CUDA run with the same resume follows"))
        attempt(1, "1 process, cuda")
    return rows


# ----------------------------------------------------------------------------- report
def render(env: dict[str, Any], rows: list[dict[str, Any]], wall: float) -> str:
    head = f"gpu_check: {env.get('gpu', 'no GPU (dry run on CPU)')}; torch {env['torch']} (CUDA {env['cuda']}); " \
           f"CPU {env['cpu']} (avx512_bf16 {env['cpu_bf16']['avx512_bf16']}, amx_bf16 {env['cpu_bf16']['amx_bf16']}); " \
           f"{env['date']}; {wall:.0f} s"  # fmt: skip
    lines = [head, "", "| section | config | status | img/s | peak MB | detail |", "|---|---|---|---|---|---|"]
    for r in rows:
        ips = f"{r['images_per_s']:.1f}" if r.get("images_per_s") is not None else ""
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else ""
        lines.append(f"| {r['section']} | {r['config']} | {r['status']} | {ips} | {peak} | {r.get('detail', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="run every section on CPU with the test model")
    ap.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="folder for the JSON and the DDP run")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all sections together")
    ap.add_argument("--sections", default="parity,grid,ddp")
    ap.add_argument("--compile-timeout", type=float, default=75.0, help="seconds per torch.compile row")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check; "
              "`--dry-run` exercises the same code on CPU")  # fmt: skip
        return 0
    s = settings(args.dry_run)
    if args.dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    t0 = time.perf_counter()
    budget = Deadline(args.budget)
    env = environment(s)
    # Shares of the budget: parity is quick; the grid and DDP split the rest.
    shares = {"parity": 0.1, "grid": 0.55, "ddp": 0.35}
    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out, prefix="work.") as work:
        for name in sections:
            remaining = sections[sections.index(name) :]
            box = Deadline(budget.left() * shares.get(name, 0.3) / sum(shares.get(n, 0.3) for n in remaining))
            print(f"gpu_check: {name} ({box.left():.0f} s box)", file=sys.stderr, flush=True)
            try:
                if name == "parity":
                    rows += parity(s, box)
                elif name == "grid":
                    rows += grid(s, box, args.compile_timeout)
                elif name == "ddp":
                    rows += ddp(s, box, Path(work))
                else:
                    raise SystemExit(f"unknown section {name!r}; known: parity, grid, ddp")
            except SystemExit:
                raise
            except Exception as exc:
                rows.append(_row(name, "section", f"error: {_first_line(exc)}"))
    wall = time.perf_counter() - t0
    table = render(env, rows, wall)
    print(table)
    payload = {"env": env, "settings": s, "argv": sys.argv, "wall_s": wall, "rows": rows}
    fd, tmp = tempfile.mkstemp(dir=args.out, prefix=".gpu_check.json.")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, default=str)
    os.replace(tmp, args.out / "gpu_check.json")
    print(f"\nraw results: {args.out / 'gpu_check.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
