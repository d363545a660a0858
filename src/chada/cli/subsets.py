"""``chada subsets``: channel-subset evaluation (a stain missing at test time, or absent throughout).

Example::

    chada subsets --manifest synth/manifest.csv --dataset coloc_5ch --label-column label \\
        --models chada=runs/chada/teacher untrained=chada_vit_test one_channel=one_channel_vit_test \\
                 handmade=handmade --image-size 32 --seeds 3 --out results/subsets

Writes ``channel_subsets.csv`` / ``_summary.csv`` / ``.md`` / ``.json`` and ``channel_subsets.png``
+ ``.svg`` (score against k, one line per model, one panel per setting and metric).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_models(items: list[str]) -> dict[str, str]:
    """``["name=spec", "spec"]`` -> ``{name: spec}`` (a bare spec is named after its last path part)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep:
            name, spec = Path(item.rstrip("/")).name or item, item
        name, spec = name.strip(), spec.strip()
        if not name or not spec:
            raise ValueError(f"--models takes NAME=MODEL entries, got {item!r}")
        if name in out:
            raise ValueError(f"model name {name!r} given twice in --models")
        out[name] = spec
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    from chada.cli import options as o

    p = subparsers.add_parser(
        "subsets",
        help="score models on every channel subset (probe trained on all channels / on the subset)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    o.add_manifest(p, help="manifest CSV/Parquet (images with the same channel names)")
    p.add_argument("--label-column", default="label", help="classification label column (default: label)")
    p.add_argument(
        "--models", nargs="+", required=True, metavar="NAME=MODEL",
        help="NAME=saved folder | registered name (untrained, one init per seed) | handmade",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    o.add_dataset_filter(p)
    p.add_argument(
        "--max-subsets", type=o.at_least(1), default=20, help="subsets per k before sampling (default 20)"
    )
    p.add_argument("--seeds", type=o.at_least(1), default=3, help="number of seeds (default 3)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the subset sample (default 0)")
    o.add_image_size(p)
    p.add_argument("--pool", default="cls", choices=["cls", "all"], help="feature kind (default cls)")
    p.add_argument(
        "--train-split", nargs="+", default=["train"], help="split value(s) to fit on (default train)"
    )
    p.add_argument(
        "--test-split", nargs="+", default=["test"], help="split value(s) to test on (default test)"
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.3, help="seeded split when the split column is unusable"
    )
    p.add_argument("--metrics", nargs="+", default=["linear_probe", "knn"], choices=["linear_probe", "knn"])
    o.add_batch_size(p, default=128)
    o.add_normalize(p)
    o.add_device(p)
    o.add_precision(p)
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    o.add_quiet(p)
    o.add_debug(p)
    o.add_channel_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from chada.cli import options as o
    from chada.io import check_writable_dir
    from chada.locks import hold_output
    from chada.tasks.channel_subsets import run_channel_subsets

    if not 0 < args.test_fraction < 1:  # NaN fails too
        raise ValueError(f"--test-fraction {args.test_fraction}: the test share of the images lies in (0, 1)")
    check_writable_dir(args.out, what="--out")  # before any model runs
    hold_output(args.out, folder=True)

    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    models = parse_models(args.models)
    dtype = o.precision_dtype(args)
    results = run_channel_subsets(
        models,
        args.manifest,
        label_column=args.label_column,
        out_dir=args.out,
        max_subsets=args.max_subsets,
        seeds=args.seeds,
        image=o.image_options(args),
        channels=o.channel_options(args),
        run=o.run_options(args, dtype=dtype),
        select=o.selection(args),
        train_split=args.train_split,
        test_split=args.test_split,
        test_fraction=args.test_fraction,
        pool=args.pool,
        metrics=args.metrics,
        subset_seed=args.subset_seed,
        plot=not args.no_plot,
    )
    info = results.attrs["info"]
    print(f"{len(results)} result rows; {info['n_images']} images, channels {', '.join(info['channels'])}; "
          f"{info['seconds']['total']:.1f} s")  # fmt: skip
    print((Path(args.out) / "channel_subsets.md").read_text())
    return 0
