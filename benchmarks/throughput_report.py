"""The markdown table of ``benchmarks/throughput.py`` (one row per configuration, then notes)."""

from __future__ import annotations

import argparse
from typing import Any


def render(
    rows: list[dict[str, Any]], peaks: dict[str, float], info: dict[str, str], args: argparse.Namespace
) -> str:
    """Markdown table (also readable as plain text)."""
    ref = {(r["mode"], r["mix"], r["dtype"]): r for r in rows if r["attention"] == "padded"}
    fp32 = {(r["mode"], r["mix"], r["attention"]): r for r in rows if r["dtype"] == "float32"}
    head = ["mode", "mix", "B", "mean C", "attention", "dtype", "img/s", "x fp32", "x padded", "peak MB",
            "mem / padded", "GFLOP/s", "% matmul peak", "CPU-s/step", "x padded (CPU-s)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = ref.get((r["mode"], r["mix"], r["dtype"]))
        f = fp32.get((r["mode"], r["mix"], r["attention"]))
        speed = f"{r['images_per_s'] / p['images_per_s']:.2f}" if p else "-"
        vs32 = f"{r['images_per_s'] / f['images_per_s']:.2f}" if f else "-"
        cpu_speed = f"{p['cpu_seconds'] / r['cpu_seconds']:.2f}" if p else "-"
        mem = f"{r['peak_mb'] / p['peak_mb']:.2f}" if p and p["peak_mb"] > 0 else "-"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["mode"],
                    r["mix"],
                    str(r["batch_size"]),
                    f"{r['mean_channels']:.2f}",
                    r["attention"],
                    "bf16" if r["dtype"] == "bfloat16" else "fp32",
                    f"{r['images_per_s']:.2f}",
                    vs32,
                    speed,
                    f"{r['peak_mb']:.0f}",
                    mem,
                    f"{r['gflop_per_s']:.1f}",
                    f"{100 * r['gflop_per_s'] / peaks[r['dtype']]:.0f}%",
                    f"{r['cpu_seconds']:.2f}",
                    cpu_speed,
                ]
            )
            + " |"
        )
    methods = sorted({r["memory_method"] for r in rows})
    notes = [
        "",
        f"- {args.model}, {args.image_size}x{args.image_size}, {args.device}"
        + (", run.compile=true (per block)" if args.compile else "")
        + f"; CPU {info['cpu']}; torch {info['torch']}; {info['threads']} threads; {info['date']}"
        + (f"; GPU {info['gpu']}" if "gpu" in info else ""),
        "- torch.matmul peak (2048^3, same run, same threads): "
        + ", ".join(f"{'bf16' if d == 'bfloat16' else 'fp32'} {v:.1f} GFLOP/s" for d, v in peaks.items())
        + "; bf16 rows run under torch.autocast, % matmul peak is against their own dtype's peak.",
        "- img/s: batch size / median wall-clock step time over the timed repeats; each row in a fresh "
        "process. CPU-s/step: median process CPU time (user+sys, all threads) of a step, less sensitive "
        f"than wall time to other load on the machine (1-min load average {info['load']}).",
        "- GFLOP/s: useful FLOPs of the real tokens (same count for both paths; formula in "
        "benchmarks/throughput.py), train = 3x forward.",
        "- peak MB: increase above model + input batch during one step ("
        + ", ".join(methods)
        + "; CPU: peak resident set size of a fresh process, reset via /proc/self/clear_refs).",
    ]
    return "\n".join(lines + notes)
