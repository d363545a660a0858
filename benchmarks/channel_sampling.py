"""What each pretraining channel-sampling scheme does to the channel-subset curve, on the synthetic data.

    python benchmarks/channel_sampling.py --out bench_out/channel_sampling --epochs 20

1. ``chada.data.synth.generate(OUT/data, n_per_assay=96, size=64, seed=0)`` (4 assays, 1/2/3/5 channels).
2. DINO-pretrains ``chada_vit_test`` on the train split of the whole corpus once per scheme, with the
   same budget and seed (two runs at a time, one torch thread each):

   - ``none``, ``discard_one``, ``hierarchical_sample``, ``hierarchical_batch``: channel ids from the
     channel vocabulary (``data.channel_vocab=auto``: ids follow names, as the subset evaluation does);
   - ``none_positional`` and ``shuffle_positional``: no vocabulary (slot = position, the paper's rule),
     without / with channel-order shuffling. (With a vocabulary, shuffling is a no-op for ChAda-ViT:
     see ``tests/test_channel_sampling.py::test_shuffle_with_vocabulary_does_not_change_the_embedding``.)

3. ``run_channel_subsets`` on ``coloc_5ch`` (5 channels, all 31 subsets) for every teacher plus an
   untrained ``chada_vit_test`` (3 seeds), labels ``label`` (3 size classes) and, with
   ``--interchannel``, ``interchannel_label`` (MarkerA/MarkerB co-localisation). Probes fit on the
   ``train`` rows and are tested on ``val`` + ``test`` rows.
4. Prints and writes ``OUT/channel_sampling.md`` / ``.csv``: scheme x k x setting, mean accuracy over
   subsets of size k (linear probe and kNN).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SCHEMES: dict[str, list[str]] = {
    "none": ["data.channel_vocab=auto"],
    "discard_one": ["data.channel_vocab=auto", "data.channel_sampling.scheme=discard_one"],
    "hierarchical_sample": [
        "data.channel_vocab=auto", "data.channel_sampling.scheme=hierarchical", "data.channel_sampling.per=sample",
    ],
    "hierarchical_batch": [
        "data.channel_vocab=auto", "data.channel_sampling.scheme=hierarchical", "data.channel_sampling.per=batch",
    ],
    "none_positional": [],
    "shuffle_positional": ["data.channel_sampling.shuffle=true"],
}  # fmt: skip

# The quickstart recipe (a tiny ChAda-ViT on CPU), written out so the benchmark does not move with it.
BASE = [
    "model.name=chada_vit_test", "model.overrides.img_size=32",
    "head.out_dim=1024", "head.hidden_dim=256", "head.bottleneck_dim=64",
    "dino.warmup_teacher_temp=0.04", "dino.teacher_temp=0.04", "dino.warmup_teacher_temp_epochs=0",
    "dino.momentum_teacher=0.99", "dino.freeze_last_layer_epochs=1",
    "optim.batch_size_per_gpu=32", "optim.lr=0.004", "optim.min_lr=1e-5", "optim.warmup_epochs=2",
    "optim.weight_decay=0.04", "optim.weight_decay_end=0.1", "optim.clip_grad=3.0",
    "augment.global_size=32", "augment.local_size=16", "augment.n_global=2", "augment.n_local=4",
    "augment.global_scale=[0.5, 1.0]", "augment.local_scale=[0.15, 0.5]",
    "data.split=train", "data.normalize=percentile", "data.num_workers=0", "data.cache=true",
    "run.device=cpu", "run.seed=0", "run.threads=1", "run.save_every_steps=10000", "run.log_every_steps=10",
    "run.tensorboard=false", "run.progress=false", "run.export_student=false",
    # the trainer's behaviour when these results were measured (DINO's defaults changed later)
    "model.drop_path_rate=0", "optim.warmup_schedule=ramp", "optim.no_weight_decay=dino_and_embeddings",
]  # fmt: skip


def pretrain_one(scheme: str, manifest: str, out: str, epochs: int) -> tuple[str, float]:
    """Pretrain one scheme (in a worker process); returns ``(scheme, wall seconds)``."""
    import torch

    from chada.ssl.config import load_config
    from chada.ssl.trainer import pretrain

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    overrides = BASE + SCHEMES[scheme] + [f"optim.epochs={epochs}", f"data.manifest={manifest}", f"run.output_dir={out}"]
    pretrain(load_config(None, overrides))
    return scheme, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/channel_sampling")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated subset of " + ",".join(SCHEMES))
    ap.add_argument("--parallel", type=int, default=2, help="pretraining runs at a time")
    ap.add_argument("--interchannel", action="store_true", help="also score interchannel_label")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the untrained model")
    args = ap.parse_args(argv)

    import pandas as pd

    from chada.data import synth
    from chada.encode.options import ImageOptions, RunOptions, Selection
    from chada.tasks.channel_subsets import run_channel_subsets

    out = Path(args.out)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise SystemExit(f"unknown scheme(s) {unknown}; known: {list(SCHEMES)}")
    manifest = out / "data" / "manifest.csv"
    if not manifest.exists():
        synth.generate(out / "data", n_per_assay=96, size=64, seed=0)
    todo = [s for s in schemes if not (out / "runs" / s / "teacher").exists()]
    walls: dict[str, float] = {}
    if todo:
        with ProcessPoolExecutor(max_workers=args.parallel) as pool:
            futs = [pool.submit(pretrain_one, s, str(manifest), str(out / "runs" / s), args.epochs) for s in todo]
            for f in futs:
                s, wall = f.result()
                walls[s] = round(wall, 1)
                print(f"pretrained {s} in {wall:.0f} s", file=sys.stderr)
    models: dict[str, str] = {s: str(out / "runs" / s / "teacher") for s in schemes}
    models["untrained"] = "chada_vit_test"
    labels = ["label"] + (["interchannel_label"] if args.interchannel else [])
    tables = []
    for label in labels:
        df = run_channel_subsets(
            models, manifest, label_column=label, out_dir=out / f"subsets_{label}", seeds=args.seeds,
            image=ImageOptions(size=32), run=RunOptions(batch_size=128, progress=False),
            select=Selection(datasets=["coloc_5ch"]), test_split=["val", "test"],
        )  # fmt: skip
        summary = df.attrs["summary"]
        summary = summary.assign(label=label)
        tables.append(summary)
    summary = pd.concat(tables, ignore_index=True)
    summary.to_csv(out / "channel_sampling.csv", index=False)
    md = to_markdown(summary, list(models))
    (out / "channel_sampling.md").write_text(md)
    (out / "pretrain_wall_s.json").write_text(json.dumps(walls, indent=1))
    print(md)
    return 0


def to_markdown(summary, order: list[str]) -> str:  # noqa: ANN001 - a pandas DataFrame
    """One table per (label, metric): rows model x setting, columns k (mean accuracy over subsets)."""
    lines = []
    for (label, metric), part in summary.groupby(["label", "metric"], sort=False):
        ks = sorted(part["k"].unique())
        lines += [f"### {label}, {metric}", "", "| scheme | setting | " + " | ".join(f"k={k}" for k in ks) + " |",
                  "|---|---|" + "---|" * len(ks)]  # fmt: skip
        for model in order:
            for setting in ("train_all", "train_subset"):
                rows = part[(part["model"] == model) & (part["setting"] == setting)].set_index("k")
                if rows.empty:
                    continue
                cells = [f"{rows.loc[k, 'mean']:.3f}" if k in rows.index else "" for k in ks]
                lines.append(f"| {model} | {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
