"""Parsers of ``chada data import`` and ``chada data build-corpus`` (adders for ``chada.cli.data``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from chada.config_reader import at_least

__all__ = ["add_import", "add_build_corpus", "add_import_arguments", "run_import", "run_build_corpus"]

_DATASETS = "bloodmnist, cyclops, bbbc048, bbbc021, nfkb, bray, chammi"


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help=f"one of: {_DATASETS}")
    p.add_argument(
        "source", help="the downloaded dataset (folder, or bloodmnist.npz) in its published layout"
    )
    p.add_argument("out", help="output folder for manifest.csv (and converted images)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits made when the source has none")
    p.add_argument(
        "--limit", type=at_least(1), default=None, help="import only the first N images (per split/table)"
    )
    p.add_argument(
        "--channel-names", nargs="+", default=None,
        help="name the channels: nfkb NAME NAME NAME; chammi DATASET=a;b;c (e.g. HPA=mt;protein;nucleus;er)",
    )  # fmt: skip
    p.add_argument(
        "--channels", nargs="+", default=None, help="bbbc048: ImageStream channels (default Ch3 Ch4 Ch6)"
    )
    p.add_argument("--moa-only", action="store_true", help="bbbc021: keep only treatments with a MoA")
    p.add_argument("--image-csv", default=None, help="bray: image table name (default BBBC022_v1_image.csv)")
    p.add_argument("--label-column", default=None, help="bray: treatment column used as label")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_import)


def add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="turn a downloaded benchmark dataset (published layout) into a manifest",
        description=f"Import a benchmark dataset in its published layout ({_DATASETS}); see docs/datasets.md.",
    )
    add_import_arguments(p)


def run_import(args: argparse.Namespace) -> int:
    from chada.data.importers import get_importer, import_dataset
    from chada.data.manifest import load_manifest

    options: dict = {"seed": args.seed, "limit": args.limit, "progress": not args.quiet}
    key = args.dataset.lower()
    get_importer(key)  # unknown names fail before anything is read
    from chada.io import check_writable_dir
    from chada.locks import hold_output

    check_writable_dir(args.out, what="OUT")
    hold_output(args.out, folder=True)
    if args.channel_names:
        if key == "chammi":
            options["channel_names"] = {
                k: v.split(";") for k, _, v in (s.partition("=") for s in args.channel_names)
            }
        else:
            options["channel_names"] = [n for s in args.channel_names for n in s.split(";") if n]
    if args.channels:
        options["channels"] = args.channels
    if args.moa_only:
        options["moa_only"] = True
    if args.image_csv:
        options["image_csv"] = args.image_csv
    if args.label_column:
        options["label_column"] = args.label_column
    path = import_dataset(key, args.source, args.out, **options)
    df = load_manifest(path)
    counts = df["split"].value_counts().to_dict() if "split" in df.columns else {}
    print(f"{len(df)} images -> {path}  (splits: {counts})")
    return 0


def add_build_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-corpus",
        help="balanced, seeded, resized + normalised pretraining corpus from several manifests (IDRCell100k recipe)",
        description="Sample N images per source (study/dataset column) from each manifest, resize, normalise, "
        "write files + manifest (+ WebDataset shards) and a summary plot. Re-running skips finished images.",
    )
    p.add_argument("--sources", nargs="*", default=[], metavar="MANIFEST", help="source manifests")
    p.add_argument(
        "--per-source", type=at_least(1), required=True, help="images per source (IDRCell100k: 1300)"
    )
    p.add_argument("--size", type=at_least(1), default=224, help="output size (square)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--source-column", default=None, help="grouping column (default: 'study' if present, else 'dataset')"
    )
    p.add_argument(
        "--drop-small", action="store_true", help="drop sources with fewer than --per-source images"
    )
    p.add_argument("--normalize", default="percentile", choices=["percentile", "minmax", "none"])
    p.add_argument("--shards", action="store_true", help="also write WebDataset shards (OUT/shards)")
    p.add_argument("--shard-size", type=at_least(1), default=1000)
    p.add_argument(
        "--idr", nargs="*", default=None, metavar="project:ID|screen:ID",
        help="also download images of these IDR studies (needs network)",
    )  # fmt: skip
    p.add_argument("--idr-url", default="https://idr.openmicroscopy.org", help="IDR server")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_build_corpus)


def run_build_corpus(args: argparse.Namespace) -> int:
    from chada.data.corpus import build_corpus
    from chada.io import check_writable_dir
    from chada.locks import hold_output

    check_writable_dir(args.out, what="--out")
    hold_output(args.out, folder=True)
    sources = [Path(s) for s in args.sources]
    if args.idr:
        from chada.data.idr import IDRClient, download_study

        client = IDRClient(args.idr_url)
        for spec in args.idr:
            sources.append(download_study(client, spec, Path(args.out) / "idr_raw", args.per_source, seed=args.seed,
                                          progress=not args.quiet))  # fmt: skip
    if not sources:
        raise ValueError("give at least one --sources manifest or an --idr study")
    info = build_corpus(
        sources, args.out, per_source=args.per_source, size=args.size, seed=args.seed,
        source_column=args.source_column, drop_small=args.drop_small, normalize=args.normalize,
        shards=args.shards, shard_size=args.shard_size, progress=not args.quiet,
    )  # fmt: skip
    print(
        f"{info['n_images']} images from {len(info['per_source'])} sources -> {info['manifest']} "
        f"({info['written']} written, {info['skipped']} already there); plot {info['plot']}"
    )
    for name, n in info["per_source"].items():
        print(f"  {name}: {n}")
    return 0
