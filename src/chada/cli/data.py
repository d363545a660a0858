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

from chada.cli.options import add_normalize
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
            "image ids, NaN/inf pixels per image) and exits 2 if any; 0 images is an error too."
        ),
    )
    p.add_argument("manifest", help="manifest file (.csv/.tsv/.parquet)")
    p.add_argument("--c-max", type=int, default=10, help="largest accepted channel count (default 10)")
    p.add_argument("--root", default=None, help="folder for relative paths (default: manifest's folder)")
    p.add_argument("--no-read", action="store_true", help="only check that files exist (fast)")
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
        args.manifest, c_max=args.c_max, root=args.root, read_pixels=not args.no_read, nan_policy=args.nan_policy
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
    p.add_argument("--n-per-assay", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--assays", nargs="+", default=None, help="subset of nuclei_1ch markers_2ch cellpaint_3ch coloc_5ch")
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


# ----------------------------------------------------------------------------------- synth-plate
def _pair(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two integers), got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_synth_plate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth-plate",
        help="write a synthetic screen: per-channel TIFFs by plate/well/site, label images, platemap, ground truth",
        description=(
            "Write OUT/images/PLATE/{well}_s{site}_w{n}.tif (uint16, one per channel), {well}_s{site}_cp_masks.tif "
            "(uint16 cell labels), OUT/platemap.csv (plate, well, compound, dose, moa, control_type) and "
            "OUT/ground_truth.json (each compound's MoA, affected channel, effect per dose; plate effects; cells "
            "per field). Compounds change one named feature per MoA with dose; DMSO wells on every plate."
        ),
    )
    p.add_argument("out", metavar="OUT")
    p.add_argument("--plates", type=int, default=2)
    p.add_argument("--wells", type=int, default=24, help="wells per plate (A01, A02, ...; default 24)")
    p.add_argument("--sites", type=int, default=2, help="fields per well (default 2)")
    p.add_argument("--channels", type=int, default=3, help="1..5 of DAPI, Tubulin, Actin, Mito, ER (default 3)")
    p.add_argument("--size", type=int, default=128, help="field side in pixels (default 128)")
    p.add_argument("--cells", type=_pair, default=None, metavar="LO,HI", help="cells per field (default 10,20 per 128x128 px)")
    p.add_argument("--moas", type=int, default=3, help="MoA classes (default 3)")
    p.add_argument("--compounds-per-moa", type=int, default=2)
    p.add_argument("--inactive", type=int, default=2, help="inactive compounds (default 2)")
    p.add_argument("--doses", type=_floats, default=(1.0, 10.0), metavar="D1,D2,...", help="doses in uM (default 1,10)")
    p.add_argument("--replicates", type=int, default=1, help="wells per (compound, dose) on a plate that holds it (default 1)")
    p.add_argument("--design", choices=("all", "split"), default="all",
                   help="all: every compound on every plate (default); split: the i-th compound of each MoA on plate i mod PLATES")
    p.add_argument("--no-plate-effects", action="store_true", help="no plate gain, illumination gradient or stain shift")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_synth_plate)


def _run_synth_plate(args: argparse.Namespace) -> int:
    import json
    import shlex

    from chada.data.plate_synth import PlateSpec, generate_plate
    from chada.io import check_writable_dir

    spec = PlateSpec(
        n_plates=args.plates, n_wells=args.wells, n_sites=args.sites, n_channels=args.channels, size=args.size,
        cells=args.cells, n_moas=args.moas, compounds_per_moa=args.compounds_per_moa, n_inactive=args.inactive,
        doses=args.doses, replicates=args.replicates, design=args.design, plate_effects=not args.no_plate_effects,
        seed=args.seed,
    )  # fmt: skip
    spec.check()
    check_writable_dir(args.out, what="OUT")
    truth_path = generate_plate(args.out, spec)
    truth = json.loads(truth_path.read_text())
    out, scan = Path(args.out), truth["scan"]
    print(f"{spec.n_plates} plate(s) x {spec.n_wells} wells x {spec.n_sites} site(s) x {spec.n_channels} channels "
          f"({', '.join(truth['channels'])}), {sum(truth['cells'].values())} cells, in {out / 'images'}")
    print(f"platemap {out / 'platemap.csv'}, ground truth {truth_path}")
    argv = ["chada", "data", "scan", str(out / "images"), "--pattern", scan["pattern"], "--channel-names",
            scan["channel_names"], "--objects-pattern", scan["objects_pattern"], "--platemap", str(out / "platemap.csv"),
            "--dataset", "synth_plate", "--out", str(out / "manifest.csv")]  # fmt: skip
    print(f"next: {shlex.join(argv)}")
    return 0


# ------------------------------------------------------------------------------------------ scan
def _add_scan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan",
        help="a manifest from a plate folder, by a filename pattern (+ platemap, label images)",
        description=(
            "Write a manifest from the files under ROOT, one row per image (the pattern's fields other "
            "than {channel} are the image key), its channel files in channel order. Errors (each listed by "
            "name, exit 2, nothing written): image files matching no pattern, unnamed channel values, "
            "duplicate keys, images missing a channel or a label image, wells absent from the platemap. "
            "Files that are not images (CSV, JSON, ...) are skipped. See docs/plates.md."
        ),
    )
    p.add_argument("root", metavar="ROOT", help="the plate folder")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--pattern", help="parse-style pattern of the path below ROOT, e.g. '{plate}/{well}_s{site}_w{channel}.tif'")
    how.add_argument("--regex", help="a Python regular expression with named groups instead, e.g. '(?P<well>[A-P]\\d+)_(?P<channel>w\\d)\\.tif'")
    p.add_argument("--out", required=True, help="manifest to write (.csv, .tsv or .parquet)")
    p.add_argument("--channel-names", default=None, metavar="V=NAME,...",
                   help="name and order the channel values, e.g. 'w1=DAPI,w2=Tubulin' (default: the values, natural order)")
    p.add_argument("--platemap", default=None, help="CSV with a well column (and optionally plate) to join")
    p.add_argument("--objects-pattern", default=None,
                   help="pattern (same syntax) of the label images, e.g. '{plate}/{well}_s{site}_cp_masks.tif' -> objects_file")
    p.add_argument("--metadata-prefix", default="", metavar="PREFIX",
                   help="prefix of the metadata columns (fields and platemap), e.g. Metadata_ (pycytominer)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="drop images missing a channel, a label image or a platemap row (and skip unmatched files) instead of failing")
    p.add_argument("--dataset", default=None, help="the dataset column (default: ROOT's folder name)")
    p.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                   help="skip files whose path or name matches GLOB, e.g. '*_thumb*' (repeatable)")
    p.add_argument("--absolute-paths", action="store_true", help="write absolute paths (default: relative to the manifest)")
    p.set_defaults(func=_run_scan)  # fmt: skip


def _run_scan(args: argparse.Namespace) -> int:
    from chada.data.scan import ScanError, scan_folder, write_table
    from chada.io import check_writable_file

    out = check_writable_file(args.out, what="--out")
    try:
        res = scan_folder(
            args.root, args.pattern or args.regex, regex=args.regex is not None, channel_names=args.channel_names,
            platemap=args.platemap, objects_pattern=args.objects_pattern, metadata_prefix=args.metadata_prefix,
            allow_incomplete=args.allow_incomplete, dataset=args.dataset, ignore=tuple(args.ignore),
            base=None if args.absolute_paths else Path(out).parent,
        )  # fmt: skip
    except ScanError as exc:
        for problem in exc.problems:
            print(f"chada data scan: {problem.message}", file=sys.stderr)
        droppable = {"unmatched", "missing_channel", "missing_objects", "orphan_objects", "not_in_platemap"}
        fixable = not args.allow_incomplete and any(p.kind in droppable for p in exc.problems)
        hint = " (--allow-incomplete keeps the complete images)" if fixable else ""
        print(f"chada data scan: {args.root}: {len(exc.problems)} problem(s), nothing written{hint}", file=sys.stderr)
        return 2
    write_table(res.table, out)
    print(f"{out}: {len(res.table)} images x {len(res.channel_names)} channels ({', '.join(res.channel_names)}) "
          f"from {res.n_files} files under {args.root}")  # fmt: skip
    for reason, n in res.skipped.items():
        print(f"  skipped {n} file(s): {reason}")
    for reason, n in res.dropped.items():
        print(f"  dropped {n} image(s) {reason} (--allow-incomplete)")
    return 0


# ----------------------------------------------------------------------------------------- shard
def _add_shard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="convert a manifest into WebDataset tar shards")
    p.add_argument("manifest")
    p.add_argument("out")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--dtype", choices=("uint16", "float16"), default="uint16", help="pixel storage (default: uint16, exact to 1/65535)")
    add_normalize(p)
    p.add_argument("--size", type=int, default=None, help="resize every image to SIZE x SIZE")
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
    _add_synth_plate,
    _add_shard,
    _add_scan,
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
