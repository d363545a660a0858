"""gpu_check's in-process model sections: attention parity, ``run.compile=true`` as the trainer does
it, and the throughput grid.

Every CUDA memory-statistics or ``empty_cache`` call goes through :func:`cuda_call`: after a sticky
CUDA error (an illegal address) those calls raise too, and must lose only their own row's number,
not the section's rows.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from throughput import mix_counts, model_flops, select_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIXES = ("idrcell", "all1", "all10")
ATTENTIONS = ("packed", "padded", "varlen")
# fp32: largest |mode - padded| over real tokens, relative to the largest |padded| of that layer (hidden
# states of a 12-layer model reach ~10, so an absolute 1e-4 would be a 1e-5 relative bound at the end
# and a 1e-3 one at the start). bf16 kernels round differently: judged by the CLS cosine.
FP32_REL_TOL = 1e-4
BF16_MIN_COSINE = 0.999
Row = Callable[..., None]


def cuda_call(device: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` for a CUDA device, None on CPU or when it raises (a sticky CUDA error)."""
    if not device.startswith("cuda"):
        return None
    try:
        return fn(*args)
    except Exception:
        return None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0]}"[:200]


# ----------------------------------------------------------------------------- parity
def _perturbed_model(name: str, device: str) -> torch.nn.Module:
    from chada.models import create_model

    torch.manual_seed(0)
    model = create_model(name)
    with torch.no_grad():  # non-trivial embeddings/biases so a wrong slot or leaked padding shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.to(device).eval()


def _kernel_name(model: Any, device: str, dtype: torch.dtype) -> str:
    from chada.models import varlen

    hd = model.config.embed_dim // model.config.num_heads
    probe = torch.empty(1, 1, hd, device=device, dtype=dtype)
    fused = varlen._varlen_kernel_available(probe) and varlen.varlen_kernel_supported(device)
    return "varlen_attn" if fused else "grouped SDPA fallback"


def _compare(
    dname: str, mode: str, o: Any, pd: Any, ref32: torch.Tensor | None
) -> tuple[bool, dict[str, Any]]:
    """Per-layer differences of ``o`` against the padded output ``pd`` over real tokens."""
    N = pd.grid[0] * pd.grid[1]
    real = torch.cat(
        [torch.ones_like(pd.channel_mask[:, :1]), pd.channel_mask.repeat_interleave(N, dim=1)], dim=1
    )
    abs_diff, rel_diff = [], []
    for a, b in zip(o.hidden_states, pd.hidden_states):
        d = float((a.float() - b.float())[real].abs().max())
        abs_diff.append(d)
        rel_diff.append(d / max(float(b.float()[real].abs().max()), 1e-30))
    final = float((o.patch_tokens.float() - pd.patch_tokens.float()).abs().max())
    rel_diff.append(final / max(float(pd.patch_tokens.float().abs().max()), 1e-30))
    cos = float(F.cosine_similarity(o.cls.float(), pd.cls.float()).min())
    cos32 = float(F.cosine_similarity(o.cls.float(), ref32).min()) if ref32 is not None else None
    worst = max(rel_diff)
    if dname == "fp32":
        ok = worst < FP32_REL_TOL
    else:
        ok = cos >= BF16_MIN_COSINE and (cos32 is None or cos32 >= BF16_MIN_COSINE)
    detail = (
        f"max |{mode}-padded|/max|padded| over {len(abs_diff)} layers {worst:.2e}"
        + (f" (tol {FP32_REL_TOL:g})" if dname == "fp32" else "")
        + f"; CLS cos to padded {cos:.6f}"
        + (f", to fp32 padded {cos32:.6f}" if dname == "bf16" and cos32 is not None else "")
    )
    return ok, dict(layer_max_abs_diff=abs_diff, layer_rel_diff=rel_diff, cls_cosine=cos, detail=detail)


def parity(s: dict[str, Any], left: Callable[[], float], add: Row) -> None:
    """packed and varlen against padded, fp32 and bf16, every layer's real tokens and the CLS."""
    from chada.models import ChannelBatch
    from chada.models.precision import autocast

    device = s["device"]
    model = _perturbed_model(s["model"], device)
    g = torch.Generator().manual_seed(0)
    S = s["image_size"]
    cpu_batch = ChannelBatch.from_images([torch.randn(c, S, S, generator=g) for c in s["parity_counts"]])
    batch = cpu_batch.to(device)
    ref32 = None
    for dname, dtype in DTYPES.items():
        outs, peaks = {}, {}
        for mode in ("padded", "packed", "varlen"):
            if left() <= 0:
                add("parity", f"{dname} {mode}", "skipped (time box)")
                continue
            model.set_attention(mode)
            cuda_call(device, torch.cuda.reset_peak_memory_stats, device)
            try:
                with torch.inference_mode(), autocast(dtype, device):
                    outs[mode] = model.forward_features(batch, return_hidden_states=True)
                sync(device)
            except Exception as exc:  # one broken kernel must not hide the rest
                add("parity", f"{dname} {mode}", f"error: {first_line(exc)}")
            peak = cuda_call(device, torch.cuda.max_memory_allocated, device)
            peaks[mode] = None if peak is None else peak / 2**20
        if "padded" not in outs:
            continue
        if dname == "fp32":
            ref32 = outs["padded"].cls.float()
        for mode in ("packed", "varlen"):
            if mode not in outs:
                continue
            try:
                ok, fields = _compare(
                    dname, mode, outs[mode], outs["padded"], ref32 if dname == "bf16" else None
                )
                if mode == "varlen":
                    fields["detail"] += f"; kernel {_kernel_name(model, device, dtype)}"
            except Exception as exc:
                add("parity", f"{dname} {mode} vs padded", f"error: {first_line(exc)}")
                continue
            add("parity", f"{dname} {mode} vs padded, C={list(s['parity_counts'])}", "PASS" if ok else "FAIL",
                peak_mb=peaks.get(mode), **fields)  # fmt: skip
    model.set_attention("packed")


# ----------------------------------------------------------------------------- one measurement
def _step_fn(model: Any, mode: str, dtype: torch.dtype, device: str) -> Callable[[Any], None]:
    from chada.models.precision import autocast

    def step(batch: Any) -> None:
        if mode == "infer":
            with torch.inference_mode(), autocast(dtype, device):
                model.forward_features(batch)
        else:
            model.zero_grad(set_to_none=True)
            with autocast(dtype, device):
                out = model.forward_features(batch)
                loss = out.cls.float().sum() + out.patch_tokens.float().sum()
            loss.backward()
        sync(device)

    return step


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Images/s and peak memory of one configuration, in this process. ``spec["compile"]``: the
    trainer's ``run.compile=true`` (:func:`chada.ssl.trainer.compile_blocks`, per block), timed on one
    batch mix after a second mix has run (the per-block graphs must serve both without recompiling)."""
    from chada.models import ChannelBatch, create_model

    device, mode = spec["device"], spec["mode"]
    select_device(device)
    torch.manual_seed(0)
    drop = 0.1 if spec["compile"] and mode == "train" else 0.0
    model = (
        create_model(spec["model"], attention=spec["attention"], drop_path_rate=drop)
        .to(device)
        .train(mode == "train")
    )
    S = spec["image_size"]
    batches = [ChannelBatch(torch.randn(sum(c), S, S), torch.tensor(c)).to(device) for c in spec["mixes"]]
    extra: dict[str, Any] = {}
    if spec["compile"]:
        from chada.ssl.trainer import compile_blocks

        if spec.get("eager_backend"):  # dry run: dynamo's tracing and guards without inductor's minutes
            _compile_with_eager_backend()
        compile_blocks(model)
    step = _step_fn(model, mode, DTYPES[spec["dtype"]], device)
    t0 = time.perf_counter()
    step(batches[0])  # first step: kernels, autotuning, compilation
    extra["first_step_s"] = time.perf_counter() - t0
    graphs = _graph_count()
    for b in batches[1:]:
        t0 = time.perf_counter()
        step(b)
        extra["other_mix_step_s"] = time.perf_counter() - t0
    if spec["compile"]:
        extra["graphs_added_by_other_mix"] = _graph_count() - graphs
    for _ in range(spec["warmup"]):
        step(batches[0])
    base = cuda_call(device, torch.cuda.memory_allocated, device)
    cuda_call(device, torch.cuda.reset_peak_memory_stats, device)
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        step(batches[0])
        times.append(time.perf_counter() - t)
    peak = cuda_call(device, torch.cuda.max_memory_allocated, device)
    counts = spec["mixes"][0]
    sec = statistics.median(times)
    flops = model_flops(counts, model.config, S) * (3.0 if mode == "train" else 1.0)
    return {
        "images_per_s": len(counts) / sec, "seconds": sec, "tflop_per_s": flops / sec / 1e12,
        "peak_mb": None if peak is None or base is None else (peak - base) / 2**20, **extra,
    }  # fmt: skip


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _compile_with_eager_backend() -> None:
    """Make ``nn.Module.compile`` use dynamo's ``eager`` backend in this (dry-run worker) process."""
    original = torch.nn.Module.compile

    def compile_eager(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        kwargs["backend"] = "eager"
        original(self, *args, **kwargs)

    torch.nn.Module.compile = compile_eager  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- grid and compile rows
def grid_specs(s: dict[str, Any]) -> list[dict[str, Any]]:
    from chada.models import create_model

    c_max = create_model(s["model"]).config.max_channels
    specs = []
    for mode in ("infer", "train"):
        bs = s["infer_bs"] if mode == "infer" else s["train_bs"]
        for mix in MIXES:
            for dname in DTYPES:
                for att in ATTENTIONS:
                    specs.append(dict(mode=mode, mix=mix, dtype=dname, attention=att, compile=False,
                                      mixes=[mix_counts(mix, bs, c_max)]))  # fmt: skip
    return [dict(sp, **_common(s)) for sp in specs]


def compile_specs(s: dict[str, Any]) -> list[dict[str, Any]]:
    """``run.compile=true`` rows, most wanted first (the time box may cut the last ones): training,
    then inference, varlen then packed; each times the idrcell mix after an all-10 batch ran."""
    from chada.models import create_model

    c_max = create_model(s["model"]).config.max_channels
    dname = "fp32" if s["device"] == "cpu" else "bf16"
    specs = []
    for mode in ("train", "infer"):
        bs = s["infer_bs"] if mode == "infer" else s["train_bs"]
        for att in ("varlen", "packed"):
            mixes = [mix_counts("idrcell", bs, c_max), mix_counts("all10", max(bs // 4, 1), c_max)]
            specs.append(dict(mode=mode, mix="idrcell", dtype=dname, attention=att, compile=True, mixes=mixes,
                              eager_backend=s["device"] == "cpu"))  # fmt: skip
    return [dict(sp, **_common(s)) for sp in specs]


def _common(s: dict[str, Any]) -> dict[str, Any]:
    return dict(
        device=s["device"],
        model=s["model"],
        image_size=s["image_size"],
        warmup=s["warmup"],
        repeats=s["repeats"],
    )


def spec_name(sp: dict[str, Any]) -> str:
    return f"{sp['mode']} {sp['mix']} {sp['dtype']} {sp['attention']}" + (
        " run.compile=true" if sp["compile"] else ""
    )


def row_fields(sp: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    """The row of one measurement: its numbers and a one-line detail."""
    counts = sp["mixes"][0]
    detail = (f"B={len(counts)}, mean C {sum(counts) / len(counts):.2f}; {r['tflop_per_s']:.3g} TFLOP/s useful; "
              f"first step {r['first_step_s']:.1f} s")  # fmt: skip
    if sp["compile"]:
        detail += f"; another mix {r.get('other_mix_step_s', 0):.1f} s, {r.get('graphs_added_by_other_mix')} new graphs"
        if sp.get("eager_backend"):
            detail += " (dry run: dynamo with the eager backend)"
    return dict(r, detail=detail)
