"""``chada project``: PCA and UMAP of several embedding files in one space (the paper's Fig. 5).

Example::

    chada project --embeddings emb/bbbc021.npz emb/bray.npz --color-by label --out proj.png

Writes ``proj.png`` + ``proj.svg`` and ``proj.csv`` (2-D coordinates + metadata, input row order:
file 1's rows, then file 2's, ...), and prints the explained variance and the separability scores.
"""

from __future__ import annotations

import argparse
import sys

from chada.cli.options import add_debug, at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "project",
        help="UMAP/PCA of embeddings from several datasets in one plot, with separability scores",
        description=(
            "Concatenate embedding files (same model), standardise, project with PCA and/or UMAP, and plot "
            "coloured by dataset and by a label column. Prints the explained variance per component and how "
            "linearly the datasets separate along PC1 (and the labels along PC2)."
        ),
    )
    p.add_argument("--embeddings", nargs="+", required=True, metavar="E.npz", help="files from `chada embed`")
    p.add_argument("--out", required=True, help="output picture (.png; .svg and .csv are written next to it)")
    p.add_argument("--feature", default="cls", help="feature kind in the files: cls (default) or all")
    p.add_argument(
        "--color-by", default="label", metavar="COLUMN", help="label column for colours (default label)"
    )
    p.add_argument(
        "--marker-by",
        default=None,
        metavar="COLUMN",
        help="column whose labels shared by several datasets get markers in the dataset panel (default: the dataset)",
    )
    p.add_argument(
        "--method",
        nargs="+",
        default=["both"],
        choices=["umap", "pca", "both"],
        help="projections to draw (default both)",
    )
    p.add_argument(
        "--names", nargs="+", default=None, help="display names of the files (default: file stems)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--n-neighbors", type=at_least(2), default=15, help="UMAP neighbours (lowered for small N)"
    )
    p.add_argument(
        "--allow-mixed-models",
        action="store_true",
        help="plot embeddings of different models together (same size only)",
    )
    add_debug(p)
    p.set_defaults(func=run)


def _step(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from chada.io import check_writable_file
    from chada.locks import hold_output

    t0 = time.perf_counter()
    _step(f"loading {len(args.embeddings)} embedding file(s)")
    from chada.viz.projection import format_stats, project, write_coords_csv
    from chada.viz.projection_figure import plot_projection
    from chada.viz.style import figure_paths

    png, _ = figure_paths(args.out)  # reject a bad suffix before any work
    check_writable_file(args.out, what="--out")
    hold_output(args.out, folder=False)
    methods = ["pca", "umap"] if "both" in args.method else list(dict.fromkeys(args.method))
    coords, stats = project(
        args.embeddings,
        feature=args.feature,
        color_by=args.color_by,
        methods=methods,
        seed=args.seed,
        names=args.names,
        allow_mixed_models=args.allow_mixed_models,
        n_neighbors=args.n_neighbors,
        marker_by=args.marker_by,
        log=_step,
    )
    print(format_stats(stats))
    _step("drawing the panels")
    paths = plot_projection(coords, stats, args.out, color_by=stats["color_by"], marker_by=args.marker_by)
    csv = write_coords_csv(coords, png.with_suffix(".csv"))
    from chada.io import atomic_write_bytes

    stats_path = png.with_name(png.stem + "_stats.json")
    atomic_write_bytes(stats_path, (json.dumps(stats, indent=2, default=str) + "\n").encode())
    print("wrote " + ", ".join(str(p) for p in [*paths, csv, stats_path]))
    _step(f"done in {time.perf_counter() - t0:.0f} s")
    return 0
