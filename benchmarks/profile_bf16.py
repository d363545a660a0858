"""bf16 vs fp32 inference of ChAda-ViT on CPU: speed in interleaved rounds, accuracy, and profiles.

Usage (from the repository root; takes ~1-2 minutes on 2 cores)::

    flock /tmp/chada-cpu.lock python benchmarks/profile_bf16.py --rounds 5 --profile

One process builds ``--model`` once and one batch of the ``--mix`` channel counts (the IDRCell-like
mix of benchmarks/throughput.py by default), then times the packed ``forward_features`` under
``torch.inference_mode()`` in every variant, one step of each variant per round (interleaved, so
that a change of machine load hits every variant alike), and reports the median images/s:

- ``fp32``: the reference;
- ``bf16_sdpa``: ``torch.autocast("cpu", bfloat16)`` with torch's fused CPU attention kernel
  (``F.scaled_dot_product_attention``): what plain autocast gave before this change;
- ``bf16``: autocast with the explicit chunked bf16 attention (:func:`chada.models.layers.attention`),
  the path ``resolve_precision`` + ``autocast`` select;
- ``bf16_weights``: the whole model cast to bf16 (``model.to(torch.bfloat16)``), explicit attention.

``--attentions packed,varlen`` repeats every variant per attention mode (x fp32 is always against
the first mode's fp32). Accuracy: cosine of every image's CLS embedding to that fp32 reference
(minimum over the batch). ``--profile`` adds torch.profiler's top operators (self CPU time) of one
step per variant; ``--chunk-elements`` changes the explicit attention's chunk budget.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import MIXES, mix_counts  # noqa: E402

from chada.models import ChannelBatch, create_model  # noqa: E402
from chada.models import layers as chada_layers  # noqa: E402
from chada.models.precision import cpu_bf16_feature, cpu_model_name, read_cpu_flags  # noqa: E402

VARIANTS = ("fp32", "bf16_sdpa", "bf16", "bf16_weights")


def make_step(
    name: str, attention: str, model: torch.nn.Module, model_bf16: torch.nn.Module, batch: ChannelBatch
):
    """A no-argument function running one inference step of variant ``name`` with ``attention``;
    returns CLS ``[B, D]`` in fp32."""

    def step() -> torch.Tensor:
        chada_layers.CPU_BF16_ATTENTION = "sdpa" if name == "bf16_sdpa" else "explicit"
        model.set_attention(attention)
        model_bf16.set_attention(attention)
        with torch.inference_mode():
            if name == "fp32":
                return model.forward_features(batch).cls
            if name == "bf16_weights":
                return model_bf16.forward_features(batch).cls.float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.forward_features(batch).cls.float()

    return step


def profile_table(step, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="chada_vit_moyen")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--mix", default="idrcell", help=f"one of {MIXES} or allK")
    ap.add_argument(
        "--attentions",
        default="packed",
        help="comma list of packed,padded,varlen; x fp32 is against the first",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--profile", action="store_true", help="print torch.profiler top operators per variant")
    ap.add_argument("--profile-rows", type=int, default=12)
    ap.add_argument(
        "--chunk-elements", type=int, default=None,
        help="score elements per chunk of the explicit bf16 attention (default: the library's 2^20)",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.chunk_elements is not None:
        chada_layers._CPU_BF16_CHUNK_ELEMENTS = args.chunk_elements
    torch.manual_seed(0)
    attentions = [a.strip() for a in args.attentions.split(",") if a.strip()]
    model = create_model(args.model).eval()
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    counts = mix_counts(args.mix, args.batch_size, model.config.max_channels)
    S = args.image_size
    batch = ChannelBatch(torch.randn(sum(counts), S, S), torch.tensor(counts))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {VARIANTS}")
    if "fp32" not in variants:
        variants.insert(0, "fp32")
    # keys "attention/variant"; the first key is the reference (fp32 with the first attention mode)
    steps = {f"{a}/{v}": make_step(v, a, model, model_bf16, batch) for a in attentions for v in variants}
    keys = list(steps)

    ref = steps[keys[0]]()
    cosine = {k: float(F.cosine_similarity(steps[k](), ref).min()) for k in keys}
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        for k in keys:
            t = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t)
        print(
            f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {times[k][-1]:.3f}s" for k in keys),
            file=sys.stderr,
        )

    flags = read_cpu_flags()
    cpu = cpu_model_name()
    feature = cpu_bf16_feature()
    bf16_flags = ", ".join(f"{f}: {'yes' if f in flags else 'no'}" for f in ("avx512_bf16", "amx_bf16"))
    B = len(counts)
    fp32_ips = B / statistics.median(times[keys[0]])
    lines = [
        f"| attention | variant | img/s (median) | x {keys[0].replace('/', ' ')} | min CLS cosine to it | step s (all rounds) |",
        "|---|---|---|---|---|---|",
    ]
    rows: list[dict[str, Any]] = []
    for k in keys:
        a, v = k.split("/")
        ips = B / statistics.median(times[k])
        rows.append(
            {
                "attention": a,
                "variant": v,
                "images_per_s": ips,
                "x_ref": ips / fp32_ips,
                "min_cosine": cosine[k],
                "times": times[k],
            }
        )
        lines.append(
            f"| {a} | {v} | {ips:.2f} | {ips / fp32_ips:.2f} | {cosine[k]:.6f} | "
            + " ".join(f"{t:.3f}" for t in times[k])
            + " |"
        )
    lines += [
        "",
        f"- {args.model}, {S}x{S}, mix {args.mix} (B={B}, mean C {sum(counts) / B:.2f}), "
        f"inference, {args.threads} threads, {args.rounds} interleaved rounds; torch {torch.__version__}",
        f"- CPU: {cpu}; {bf16_flags}; torch capability {torch.backends.cpu.get_cpu_capability()}; "
        f"native bf16 feature used by auto: {feature}",
    ]
    print("\n".join(lines))
    profiles = {}
    if args.profile:
        for k in keys:
            profiles[k] = profile_table(steps[k], args.profile_rows)
            print(f"\n### profile: {k}\n```\n{profiles[k]}```")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "cpu": cpu,
                    "flags": sorted(flags),
                    "counts": counts,
                    "rows": rows,
                    "profiles": profiles,
                },
                indent=2,
            )
        )
    chada_layers.CPU_BF16_ATTENTION = "explicit"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
