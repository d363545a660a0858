"""``chada profile``: feature tables (one per model) -> well and treatment profiles and the readouts
of image-based profiling (mAP with copairs, NSC / NSCB), with paired differences between models.

Example::

    chada profile cells_chada.parquet cells_cp.parquet --names chada cp_measure --out prof/ \\
        --batch-col batch --exclude-moa inactive

Writes ``prof/<model>/{wells,treatments}.parquet``, ``prof/readouts.{csv,json}``,
``prof/comparisons.csv``, ``prof/figures/*.png|svg`` and ``prof/profiles.md`` (a report section).
See docs/profiling.md.
"""

from __future__ import annotations

import argparse
import sys

from chada.cli.options import add_debug, at_least

# Options that map one to one onto ProfileConfig fields (None: not given, keep the config's value).
_FIELDS = ("plate_col", "well_col", "compound_col", "dose_col", "moa_col", "control_query", "batch_cols",
           "aggregate", "normalize", "feature_select", "correction", "exclude_moa", "null_size", "n_boot", "seed")  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "profile",
        help="aggregate feature tables to wells and treatments, normalise per plate, score mAP and NSC/NSCB",
        description=(
            "Cells (or images, or wells) of each feature table are aggregated to wells (pycytominer), normalised "
            "per plate against the negative controls, optionally batch-corrected (Harmony), aggregated to "
            "treatments (compound x dose) and scored: phenotypic activity and consistency mAP (copairs, "
            "permutation p-values, FDR), NSC and NSCB 1-NN MoA accuracy. Tables: .parquet, .h5ad, .npz, .csv."
        ),
    )
    p.add_argument("tables", nargs="+", metavar="TABLE", help="feature tables, one per model")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--names", nargs="+", default=None, help="model names (default: the file stems)")
    p.add_argument(
        "--config", default=None, help="YAML with the settings (top level or a 'profiles:' section)"
    )
    p.add_argument("--pool", default="cls", help=".npz tables: the feature array to read (default cls)")
    for col, default in (
        ("plate", "plate"),
        ("well", "well"),
        ("compound", "compound"),
        ("dose", "dose"),
        ("moa", "moa"),
    ):
        p.add_argument(
            f"--{col}-col",
            dest=f"{col}_col",
            default=None,
            help=f"column of the {col} (default {default}; dose, moa: 'none' for no such column)",
        )
    p.add_argument(
        "--control-query",
        default=None,
        help="pandas query of the negative controls (default \"compound == 'DMSO'\")",
    )
    p.add_argument(
        "--batch-col",
        dest="batch_cols",
        nargs="+",
        default=None,
        help="batch column(s) for NSCB and Harmony (default plate)",
    )
    p.add_argument(
        "--aggregate", default=None, choices=["median", "mean"], help="cells -> wells (default median)"
    )
    p.add_argument("--normalize", default=None, choices=["none", "standardize", "mad_robustize", "spherize"],
                   help="per plate against the controls (default mad_robustize)")  # fmt: skip
    p.add_argument("--feature-select", nargs="+", default=None, metavar="OP",
                   help="pycytominer feature_select operations, e.g. variance_threshold correlation_threshold")  # fmt: skip
    p.add_argument(
        "--correction", default=None, choices=["none", "harmony"], help="batch correction (default none)"
    )
    p.add_argument(
        "--exclude-moa", nargs="+", default=None, help="MoA labels left out of consistency and NSC/NSCB"
    )
    p.add_argument(
        "--null-size", type=at_least(1), default=None, help="copairs permutations per p-value (default 2000)"
    )
    p.add_argument(
        "--n-boot", type=at_least(1), default=None, help="bootstrap resamples for intervals (default 1000)"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--projection", default="umap", choices=["umap", "pca", "none"], help="treatment map (default umap)"
    )
    add_debug(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from chada.profiles.config import ProfileConfig

    section = {}
    if args.config:
        import yaml

        with open(args.config) as fh:
            loaded = yaml.safe_load(fh) or {}
        section = dict(loaded.get("profiles", loaded))
    for f in _FIELDS:
        value = getattr(args, f)
        if value is not None:
            section[f] = None if f in ("dose_col", "moa_col") and value == "none" else value
    return ProfileConfig.from_dict(section)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from chada.errors import InputError
    from chada.io import check_writable_dir

    names = args.names or [Path(t).stem for t in args.tables]
    if len(names) != len(args.tables) or len(set(names)) != len(names):
        raise InputError(f"--names: give {len(args.tables)} distinct names, one per table (got {names})")
    cfg = _config(args)
    out = check_writable_dir(args.out, what="--out")
    from chada.tasks.profiling import ProfilingTask, run_profiling

    task = ProfilingTask({n: Path(t) for n, t in zip(names, args.tables)}, cfg, args.projection, args.pool)
    results, _, _ = run_profiling(task, out, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    for m, r in results.items():
        print(f"{m}: " + ", ".join(f"{k} {v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                                   for k, v in r.readouts.items()))  # fmt: skip
    print(f"wrote {out}/ (profiles, readouts.csv, readouts.json, comparisons.csv, figures/, profiles.md)")
    return 0
