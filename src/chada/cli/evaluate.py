"""``chada evaluate``: frozen-feature evaluation (linear probe, kNN, 1-NN, low-data, diagnostics,
channel reconstruction).

Two forms::

    chada evaluate --config configs/eval/example.yaml [--out DIR]
    chada evaluate --embeddings A.npz B.npz ... --label-column label [--kind classification] --out DIR

The quick form evaluates one task (the label column) on every file; model names are the files' stems
and families come from each file's info (or the name: ``*untrained*``/``*random*``, ``*handmade*``).

Channel reconstruction (the paper's BBBC021 protocol) runs from the config's ``reconstruction:``
section (frozen encoders on a manifest; see configs/eval/bbbc021.yaml); it adds ``recon_mse``,
``recon_mae`` and ``recon_r2`` rows to the same tables and writes ``reconstruction_<task>.png``.
Its decoders run with ``torch_threads`` CPU threads (default 1: fastest on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chada.cli.options import add_debug, add_precision, add_quiet, at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate frozen embeddings: linear probe, kNN, 1-NN, low-data regimes, diagnostics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="evaluation YAML (see configs/eval/example.yaml)")
    p.add_argument("--embeddings", nargs="+", metavar="EMB", help="embedding files (quick form)")
    p.add_argument("--label-column", default="label", help="label column of the quick form (default: label)")
    p.add_argument("--kind", choices=["classification", "regression"], default="classification")
    p.add_argument(
        "--task-name", default=None, help="task name of the quick form (default: the label column)"
    )
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument(
        "--test-fraction", type=float, default=None,
        help="seeded stratified test split instead of the split column (used anyway when it is missing)",
    )  # fmt: skip
    p.add_argument("--seeds", type=at_least(1), default=None, help="number of seeds (default 5)")
    p.add_argument(
        "--fractions", type=float, nargs="+", default=None, help="training fractions (default 0.01 0.1 1)"
    )
    p.add_argument("--feature-kinds", nargs="+", default=None, help="feature kinds (default cls all)")
    p.add_argument(
        "--shortcut-features", default=None, help="shortcut-feature EmbeddingSet for the diagnostics"
    )
    p.add_argument(
        "--torch-threads", type=at_least(1), default=None,
        help="torch CPU threads for the reconstruction decoders (default: config's torch_threads, else 1)",
    )  # fmt: skip
    p.add_argument("--no-reconstruction", action="store_true", help="skip the config's reconstruction tasks")
    p.add_argument("--out", default=None, help="output folder (default: config's out_dir or ./eval_results)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    add_precision(p)
    add_quiet(p)
    add_debug(p)
    p.set_defaults(func=run)


def _quick_config(args: argparse.Namespace) -> dict:
    models = {}
    for path in args.embeddings:
        name = Path(path).stem
        if name in models:
            raise ValueError(f"two embedding files share the name {name!r}; rename one or use --config")
        models[name] = {"path": str(Path(path).resolve())}
    task = {"name": args.task_name or args.label_column, "label_column": args.label_column, "kind": args.kind,
            "train_split": args.train_split, "test_split": args.test_split}  # fmt: skip
    if args.test_fraction is not None:
        task["test_fraction"] = args.test_fraction
    cfg: dict = {"models": models, "tasks": [task]}
    if args.shortcut_features:
        cfg["diagnostics"] = {"shortcut_features": str(Path(args.shortcut_features).resolve())}
    return cfg


def _precision(args: argparse.Namespace, cfg: dict) -> str | None:
    """``"fp32"`` / ``"bf16"`` for the encoders of the config's reconstruction and dense tasks (said on
    stderr); None when the evaluation only reads feature files and runs no model."""
    if not (cfg.get("reconstruction") or cfg.get("dense")):
        return None
    from chada.cli.options import precision_dtype
    from chada.models.precision import precision_name

    tasks = cfg.get("reconstruction") or []
    first = tasks[0] if isinstance(tasks, list) and tasks and isinstance(tasks[0], dict) else {}
    return precision_name(precision_dtype(args, str(first.get("device", "cpu"))))


def run(args: argparse.Namespace) -> int:
    from chada.eval.config import load_config
    from chada.io import check_writable_dir
    from chada.locks import hold_output
    from chada.tasks.evaluation import run_evaluation

    if args.test_fraction is not None and not 0 < args.test_fraction < 1:  # NaN fails too
        raise ValueError(f"--test-fraction {args.test_fraction}: the test share of the images lies in (0, 1)")
    if bool(args.config) == bool(args.embeddings):
        raise ValueError("give either --config EVAL.yaml or --embeddings A.npz B.npz ...")
    if args.config:
        # A missing file, a folder, invalid YAML or a YAML list is an input error naming the file.
        cfg, base = load_config(args.config)
        cfg.setdefault("base_dir", str(base))
        if cfg.get("out_dir"):  # like every relative path of the config: against the config's folder
            cfg["out_dir"] = str(base / Path(str(cfg["out_dir"])).expanduser())
        if args.shortcut_features:
            cfg.setdefault("diagnostics", {})["shortcut_features"] = str(
                Path(args.shortcut_features).resolve()
            )
    else:
        cfg = _quick_config(args)
    if args.seeds is not None:
        cfg["seeds"] = args.seeds
    if args.fractions is not None:
        cfg["fractions"] = args.fractions
    if args.feature_kinds is not None:
        cfg["feature_kinds"] = args.feature_kinds
    if args.torch_threads is not None:
        cfg["torch_threads"] = args.torch_threads
    if args.no_reconstruction:
        cfg.pop("reconstruction", None)
    if args.config:  # config mistakes name the file (config_reader's format), before any work
        from chada.config_reader import in_file
        from chada.tasks.evaluation import normalize_config

        try:
            normalize_config(dict(cfg))
        except (ValueError, TypeError) as exc:
            raise in_file(args.config, exc) from None
    out = args.out or cfg.get("out_dir") or "eval_results"
    check_writable_dir(out, what="output folder")  # before any file is read
    hold_output(out, folder=True)  # two evaluations into one folder would mix their reports
    results = run_evaluation(cfg, out, progress=not args.quiet, write=True, plots=not args.no_plots,
                             precision=_precision(args, cfg))  # fmt: skip
    elapsed = results.attrs.get("elapsed_s", float("nan"))
    print(f"{len(results)} result rows in {elapsed:.1f} s; report in {Path(out).resolve()}")
    return 0
