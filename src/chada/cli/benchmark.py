"""``chada benchmark chammi``: embed CHAMMI in its published layout and score it with the official protocol.

::

    chada benchmark chammi --model runs/chada/final --root CHAMMI/ --out results/chammi [--metric l2|cosine]

Writes ``OUT/features/{Allen,HPA,CP}/<model>.npy`` (rows in ``enriched_meta.csv`` order, the layout
``morphem.benchmark.run_benchmark`` reads) and ``OUT/results/<model>_1nn_<metric>_results.{csv,json,md}``.
``--score-only`` scores existing feature files (e.g. ones made by another tool: ``--feature-file``).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from chada.cli import options as o

    p = subparsers.add_parser("benchmark", help="community benchmarks (CHAMMI)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    c = sub.add_parser("chammi", help="CHAMMI (WTC-11, HPA, CP): 1-NN protocol of morphem", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    o.add_model(c)
    c.add_argument("--root", required=True, help="CHAMMI root holding Allen/, HPA/, CP/")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--metric", choices=["l2", "cosine"], default="l2", help="1-NN distance (default l2)")
    o.add_batch_size(c, default=32)
    o.add_image_size(c, default=224)
    c.add_argument("--pool", default="cls", help="feature kind of the model head (default cls)")
    o.add_normalize(c)
    o.add_device(c)
    o.add_precision(c)
    c.add_argument("--datasets", nargs="+", default=["Allen", "HPA", "CP"], choices=["Allen", "HPA", "CP"])
    o.add_seed(c)
    c.add_argument("--overwrite", action="store_true", help="re-embed even if feature files exist")
    c.add_argument(
        "--score-only", action="store_true", help="only score OUT/features/<dataset>/<feature file>"
    )
    c.add_argument("--feature-file", default=None, help="feature file name to score (default <model>.npy)")
    o.add_quiet(c)
    o.add_debug(c)
    c.set_defaults(func=run_chammi)


def run_chammi(args: argparse.Namespace) -> int:
    from chada.tasks.chammi import embed_chammi, model_label, results_markdown, score_features, write_results

    name = model_label(args.model)
    from chada.io import check_writable_dir
    from chada.locks import hold_output

    out = check_writable_dir(args.out, what="--out")  # before any model runs
    hold_output(out, folder=True)
    if not args.score_only:
        from chada.cli import options as o

        embed_chammi(
            args.model, args.root, out, name=name, pool=args.pool, image=o.image_options(args),
            run=o.run_options(args, dtype=o.precision_dtype(args)), datasets=args.datasets, overwrite=args.overwrite,
        )  # fmt: skip
    feature_file = args.feature_file or f"{name}.npy"
    table, reports = score_features(args.root, out / "features", feature_file, args.metric, args.datasets)
    paths = write_results(table, reports, out / "results", name, args.metric)
    print(results_markdown(table, name))
    print(f"results: {paths['csv']}, {paths['json']}, {paths['md']}")
    return 0
