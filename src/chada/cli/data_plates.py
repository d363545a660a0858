"""``chada data synth-plate`` and ``chada data scan``: a plate folder (real or synthetic) -> a manifest.

docs/plates.md walks through the workflow; the work itself is in :mod:`chada.data.plate_synth` and
:mod:`chada.data.scan`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chada.cli.options import at_least


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


def add_synth_plate(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--plates", type=at_least(1), default=2)
    p.add_argument("--wells", type=int, default=24, help="wells per plate (A01, A02, ...; default 24)")
    p.add_argument("--sites", type=at_least(1), default=2, help="fields per well (default 2)")
    p.add_argument(
        "--channels", type=int, default=3, help="1..5 of DAPI, Tubulin, Actin, Mito, ER (default 3)"
    )
    p.add_argument("--size", type=int, default=128, help="field side in pixels (default 128)")
    p.add_argument(
        "--cells",
        type=_pair,
        default=None,
        metavar="LO,HI",
        help="cells per field (default 10,20 per 128x128 px)",
    )
    p.add_argument("--moas", type=at_least(0), default=3, help="MoA classes (default 3)")
    p.add_argument("--compounds-per-moa", type=at_least(1), default=2)
    p.add_argument("--inactive", type=at_least(0), default=2, help="inactive compounds (default 2)")
    p.add_argument(
        "--doses", type=_floats, default=(1.0, 10.0), metavar="D1,D2,...", help="doses in uM (default 1,10)"
    )
    p.add_argument(
        "--replicates",
        type=at_least(1),
        default=1,
        help="wells per (compound, dose) on a plate that holds it (default 1)",
    )
    p.add_argument(
        "--design",
        choices=("all", "split", "confounded"),
        default="all",
        help="all: every compound on every plate (default); split: the i-th compound of each MoA on plate i mod "
        "PLATES; confounded: MoA m's compounds on plate m mod PLATES but its last on the next plate "
        "(MoA confounded with plate, as BBBC021's weeks; needs PLATES >= 2, --compounds-per-moa >= 3)",
    )
    p.add_argument(
        "--no-plate-effects", action="store_true", help="no plate gain, illumination gradient or stain shift"
    )
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
    print(
        f"{spec.n_plates} plate(s) x {spec.n_wells} wells x {spec.n_sites} site(s) x {spec.n_channels} channels "
        f"({', '.join(truth['channels'])}), {sum(truth['cells'].values())} cells, in {out / 'images'}"
    )
    print(f"platemap {out / 'platemap.csv'}, ground truth {truth_path}")
    argv = ["chada", "data", "scan", str(out / "images"), "--pattern", scan["pattern"], "--channel-names",
            scan["channel_names"], "--objects-pattern", scan["objects_pattern"], "--platemap", str(out / "platemap.csv"),
            "--dataset", "synth_plate", "--out", str(out / "manifest.csv")]  # fmt: skip
    print(f"next: {shlex.join(argv)}")
    return 0


# ------------------------------------------------------------------------------------------ scan
def add_scan(sub: argparse._SubParsersAction) -> None:
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
    how.add_argument(
        "--pattern",
        help="parse-style pattern of the path below ROOT, e.g. '{plate}/{well}_s{site}_w{channel}.tif'",
    )
    how.add_argument(
        "--regex",
        help="a Python regular expression with named groups instead, e.g. '(?P<well>[A-P]\\d+)_(?P<channel>w\\d)\\.tif'",
    )
    p.add_argument("--out", required=True, help="manifest to write (.csv, .tsv or .parquet)")
    p.add_argument(
        "--channel-names",
        default=None,
        metavar="V=NAME,...",
        help="name and order the channel values, e.g. 'w1=DAPI,w2=Tubulin' (default: the values, natural order)",
    )
    p.add_argument("--platemap", default=None, help="CSV with a well column (and optionally plate) to join")
    p.add_argument(
        "--objects-pattern",
        default=None,
        help="pattern (same syntax) of the label images, e.g. '{plate}/{well}_s{site}_cp_masks.tif' -> objects_file",
    )
    p.add_argument(
        "--metadata-prefix",
        default="",
        metavar="PREFIX",
        help="prefix of the metadata columns (fields and platemap), e.g. Metadata_ (pycytominer)",
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="drop images missing a channel, a label image or a platemap row (and skip unmatched files) instead of failing",
    )
    p.add_argument("--dataset", default=None, help="the dataset column (default: ROOT's folder name)")
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files whose path or name matches GLOB, e.g. '*_thumb*' (repeatable)",
    )
    p.add_argument(
        "--absolute-paths",
        action="store_true",
        help="write absolute paths (default: relative to the manifest)",
    )
    p.set_defaults(func=_run_scan)  # fmt: skip


def _run_scan(args: argparse.Namespace) -> int:
    from chada.data.manifest import write_manifest
    from chada.data.scan import ScanError, scan_folder
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
        print(
            f"chada data scan: {args.root}: {len(exc.problems)} problem(s), nothing written{hint}",
            file=sys.stderr,
        )
        return 2
    write_manifest(res.table, out)
    print(f"{out}: {len(res.table)} images x {len(res.channel_names)} channels ({', '.join(res.channel_names)}) "
          f"from {res.n_files} files under {args.root}")  # fmt: skip
    for reason, n in res.skipped.items():
        print(f"  skipped {n} file(s): {reason}")
    for reason, n in res.dropped.items():
        print(f"  dropped {n} image(s) {reason} (--allow-incomplete)")
    return 0
