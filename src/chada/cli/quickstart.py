"""``chada quickstart``: the main job on the data that ships with chada (see :mod:`chada.pipeline.quickstart`)."""

from __future__ import annotations

import argparse

from chada.cli.options import add_debug, add_precision, at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="bundled + synthetic data -> DINO pretraining -> baselines -> evaluation -> report (CPU, minutes)",
        description="Prepare the bundled real and synthetic datasets, pretrain a small ChAda-ViT and the "
        "baselines with DINO, embed, evaluate (linear probe, kNN, low-data regimes, diagnostics), draw the "
        "attention grid and the joint projection, and write OUT/report.md + report.html. Re-running reuses "
        "finished stages.",
    )
    p.add_argument("--out", default="chada_quickstart", help="output folder (default: ./chada_quickstart)")
    p.add_argument(
        "--fast", action="store_true", help="a ~1-minute smoke run (tiny data, 1 epoch, 2 seeds, no UMAP)"
    )
    p.add_argument("--epochs", type=at_least(1), help="DINO epochs for every encoder")
    # one image per assay leaves each class a single row: the evaluation, after the pretraining, could
    # not make a test split
    p.add_argument("--n-per-assay", type=at_least(2), help="synthetic images per assay (at least 2)")
    p.add_argument("--seeds", type=at_least(1), help="evaluation seeds")
    p.add_argument(
        "--pretrain-seeds", type=at_least(1), metavar="N",
        help="DINO runs per encoder, seeds 0..N-1 (default 1: each more seed adds a whole pretraining stage, "
        "the bulk of the run time; the report gives the learned scores' mean and std over the seeds)",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=at_least(1), help="torch threads (default: all cores; 1 per parallel pretraining)"
    )
    p.add_argument(
        "--jobs",
        type=at_least(1),
        help="encoders pretrained at once, in separate processes (default: all 3 on a multi-core machine)",
    )
    p.add_argument(
        "--marker-pattern", choices=("domain", "spots"),
        help="synthetic MarkerA/MarkerB design (default: domain; spots is finer and not learned at this budget)",
    )  # fmt: skip
    p.add_argument("--no-umap", action="store_true", help="PCA only in the joint projection")
    add_precision(
        p, default="fp32",
        why="the numbers in the README's quickstart section were measured in fp32; the option sets the "
        "embedding stage's forward pass and is recorded in OUT/settings.json",
    )  # fmt: skip
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from chada.io import check_writable_dir
    from chada.locks import hold_output
    from chada.pipeline.quickstart import QuickstartSettings, run_quickstart

    check_writable_dir(args.out, what="--out")  # before anything runs
    hold_output(args.out, folder=True)

    settings = QuickstartSettings.make(
        args.out, fast=args.fast, epochs=args.epochs, n_per_assay=args.n_per_assay, seeds=args.seeds,
        pretrain_seeds=args.pretrain_seeds,
        threads=args.threads, umap=False if args.no_umap else None, jobs=args.jobs, marker_pattern=args.marker_pattern,
        precision=args.precision,
    )  # fmt: skip
    if settings.pretrain_seeds < 1:
        raise ValueError(f"--pretrain-seeds must be >= 1, got {settings.pretrain_seeds}")
    report = run_quickstart(settings)
    print(f"\nreport: {report}\n        {report.with_suffix('.html')}")
    return 0
