"""``chada data ...``: manifest validation, summary, synthetic data, sharding.

Structure: each sub-sub-command is one ``_add_NAME(sub)`` function that builds its parser and sets
``func`` to a ``_run_NAME(args) -> int`` handler; :data:`SUBCOMMANDS` lists the adders in help order.
To add a command (e.g. ``import``, ``build-corpus``) write one adder + handler and append the adder.
Heavy libraries are imported inside handlers so ``chada --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from chada.cli.data_plates import add_scan, add_synth_plate
from chada.cli.options import add_normalize, at_least
from chada.data.importers.cli import add_build_corpus, add_import

__all__ = ["register", "SUBCOMMANDS", "summarize_manifest"]


# ----------------------------------------------------------------------------------------- check
def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate a manifest; report every bad row",
        description=(
            "Validate a manifest (CSV/Parquet). Reports EVERY bad row (missing, unreadable or empty file, "
            "channel count 0 or > C_max, channel_names count or duplicates, H/W mismatch, duplicate "
            "image ids, NaN/inf pixels per image, a FIFO or device, permission denied, an image smaller than a "
            "patch, a column twice in the header) and exits 2 if any; 0 images is an error too."
        ),
    )
    p.add_argument("manifest", help="manifest file (.csv/.tsv/.parquet)")
    p.add_argument(
        "--c-max", type=at_least(1), default=10, help="largest accepted channel count (default 10)"
    )
    p.add_argument("--root", default=None, help="folder for relative paths (default: manifest's folder)")
    p.add_argument("--no-read", action="store_true", help="only check that files exist (fast)")
    p.add_argument(
        "--patch-size", type=at_least(0), default=16, metavar="P",
        help="the ViT patch size: an image smaller than P px is an error, one not a multiple of P a warning "
        "(embedding at native size refuses it); 0: no such check (default 16, ChAda-ViT's)",
    )  # fmt: skip
    p.add_argument(
        "--nan-policy",
        choices=("error", "replace"),
        default="error",
        help="NaN/inf pixels: error (default) or replace (reported as warnings: the readers' "
        "nan_policy='replace' fills them with the channel's finite median)",
    )
    p.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from chada.data.manifest import check_manifest, load_manifest

    problems = check_manifest(
        args.manifest,
        c_max=args.c_max,
        root=args.root,
        read_pixels=not args.no_read,
        nan_policy=args.nan_policy,
        patch_size=args.patch_size or None,
    )
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        print(str(p), file=sys.stderr)
    if not errors:
        n = len(load_manifest(args.manifest))
        notes = f", {len(problems)} warning(s)" if problems else ""
        print(f"{args.manifest}: OK ({n} images{notes})")
        return 0
    rows = {p.row for p in errors if p.row is not None}
    where = f" in {len(rows)} row(s)" if rows else ""
    print(f"chada data check: {args.manifest}: {len(errors)} problem(s){where}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------------------- summary
def summarize_manifest(path: str | Path, root: str | Path | None = None) -> dict:
    """Counts for a manifest: images per dataset/split, channel-count histogram, image sizes.

    Reads every image once (shapes only are kept). Unreadable rows are counted under ``unreadable``.
    """
    from collections import Counter

    from chada.data.manifest import load_manifest, read_row_image

    df = load_manifest(path)
    base = Path(root) if root is not None else Path(path).parent
    per_dataset: Counter = Counter()
    per_split: Counter = Counter()
    channels: Counter = Counter()
    sizes: Counter = Counter()
    unreadable = 0
    for row in df.to_dict("records"):
        per_dataset[str(row.get("dataset"))] += 1
        per_split[str(row.get("split", "train"))] += 1
        try:
            img = read_row_image(row, base)
        except Exception:  # noqa: BLE001 - the summary reports what it can; `check` names the causes
            unreadable += 1
            continue
        channels[int(img.shape[0])] += 1
        sizes[(int(img.shape[1]), int(img.shape[2]))] += 1
    return {
        "n_images": len(df),
        "per_dataset": dict(sorted(per_dataset.items())),
        "per_split": dict(sorted(per_split.items())),
        "channel_counts": dict(sorted(channels.items())),
        "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        "unreadable": unreadable,
    }


def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="images per dataset, channel-count histogram, image sizes")
    p.add_argument("manifest")
    p.add_argument("--root", default=None)
    p.add_argument("--plot", default=None, metavar="OUT.png", help="also write a PNG figure")
    p.set_defaults(func=_run_summary)


def _run_summary(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    if args.plot:
        from chada.io import check_writable_file
        from chada.locks import hold_output

        check_writable_file(args.plot, what="--plot")
        hold_output(args.plot, folder=False)
    s = summarize_manifest(args.manifest, args.root)
    con = Console()
    con.print(f"[bold]{args.manifest}[/bold]: {s['n_images']} images, {s['unreadable']} unreadable")
    for title, key, col in (
        ("Images per dataset", "per_dataset", "dataset"),
        ("Images per split", "per_split", "split"),
        ("Channel-count histogram", "channel_counts", "channels"),
    ):
        t = Table(title=title)
        t.add_column(col)
        t.add_column("images", justify="right")
        for k, v in s[key].items():
            t.add_row(str(k), str(v))
        con.print(t)
    t = Table(title="Image sizes (H x W)")
    t.add_column("size")
    t.add_column("images", justify="right")
    for (h, w), v in s["sizes"].items():
        t.add_row(f"{h} x {w}", str(v))
    con.print(t)
    if args.plot:
        _plot_summary(s, Path(args.plot))
        con.print(f"plot written to {args.plot}")
    return 0


def _plot_summary(s: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ds = s["per_dataset"]
    axes[0].barh(list(ds.keys()), list(ds.values()), color="tab:blue")
    axes[0].set_title("images per dataset")
    ch = s["channel_counts"]
    axes[1].bar([str(k) for k in ch], list(ch.values()), color="tab:green")
    axes[1].set_title("channel-count histogram")
    axes[1].set_xlabel("channels")
    sz = s["sizes"]
    if sz:
        hs = [k[0] for k in sz for _ in range(1)]
        ws = [k[1] for k in sz]
        axes[2].scatter(ws, hs, s=[20 + 200 * v / max(sz.values()) for v in sz.values()], alpha=0.7)
    axes[2].set_title("image sizes (marker area ~ count)")
    axes[2].set_xlabel("W")
    axes[2].set_ylabel("H")
    fig.tight_layout()
    from chada.io import atomic_writer

    with atomic_writer(out) as fh:
        fig.savefig(fh, dpi=100, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------------------- synth
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write synthetic heterogeneous multi-channel cell images + manifest")
    p.add_argument("outdir")
    p.add_argument("--n-per-assay", type=at_least(1), default=64)
    p.add_argument("--size", type=at_least(1), default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--assays", nargs="+", default=None, help="subset of nuclei_1ch markers_2ch cellpaint_3ch coloc_5ch"
    )
    p.add_argument(
        "--marker-pattern", choices=("spots", "domain"), default=None,
        help="how MarkerA/MarkerB are drawn: K spots each, or one sector of the cell each (default: spots)",
    )  # fmt: skip
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from chada.data.synth import generate
    from chada.io import check_writable_dir
    from chada.locks import hold_output

    check_writable_dir(args.outdir, what="OUTDIR")
    hold_output(args.outdir, folder=True)
    path = generate(
        args.outdir, n_per_assay=args.n_per_assay, size=args.size, seed=args.seed, assays=args.assays,
        marker_pattern=args.marker_pattern,
    )  # fmt: skip
    print(f"manifest written to {path}")
    return 0


# ----------------------------------------------------------------------------------------- shard
def _add_shard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="convert a manifest into WebDataset tar shards")
    p.add_argument("manifest")
    p.add_argument("out")
    p.add_argument("--shard-size", type=at_least(1), default=1000, help="samples per shard")
    p.add_argument(
        "--dtype",
        choices=("uint16", "float16"),
        default="uint16",
        help="pixel storage (default: uint16, exact to 1/65535)",
    )
    add_normalize(p)
    p.add_argument("--size", type=at_least(1), default=None, help="resize every image to SIZE x SIZE")
    p.add_argument("--split", default=None, help="only this split")
    p.set_defaults(func=_run_shard)


def _run_shard(args: argparse.Namespace) -> int:
    import json

    from chada.data.shards import write_shards
    from chada.io import check_writable_dir
    from chada.locks import hold_output

    check_writable_dir(args.out, what="OUT")
    hold_output(args.out, folder=True)
    index = write_shards(
        args.manifest, args.out, shard_size=args.shard_size, dtype=args.dtype,
        normalize=args.normalize, size=args.size, split=args.split,
    )  # fmt: skip
    info = json.loads(index.read_text())
    print(f"{info['n_samples']} samples in {len(info['shards'])} shard(s); index {index}")
    return 0


# ----------------------------------------------------------------------------------- registration
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_check,
    _add_summary,
    _add_synth,
    add_synth_plate,
    _add_shard,
    add_scan,
    add_import,
    add_build_corpus,
]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` and its sub-commands to the top-level ``chada`` parser."""
    p = subparsers.add_parser(
        "data",
        help="datasets: check, summary, synth, synth-plate, scan, shard, import, build-corpus",
        description="Datasets: validate a manifest (check), describe it (summary), write synthetic assays "
        "(synth), a synthetic screen with known answers (synth-plate), a manifest from a plate folder "
        "(scan), WebDataset shards (shard), import a published dataset (import), build a pretraining "
        "corpus (build-corpus). `chada data COMMAND --help` describes each.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
