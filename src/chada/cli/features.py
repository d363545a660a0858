"""``chada features``: hand-made features of a manifest's images into an embeddings ``.npz``.

Examples::

    chada features --manifest m.csv --kind shortcut --out emb/shortcut.npz
    chada features --manifest m.csv --kind handmade --out emb/handmade.npz --image-size 224
    chada features --manifest bbbc021.csv --kind cellprofiler --layout per_channel --out emb/cp.npz
    chada features --manifest he.csv --kind tissue --out emb/tissue.npz
    chada features --manifest cells.csv --kind cp_measure --out cells_cp.parquet --object-name Nuclei

The file is read by ``chada evaluate`` like any model's embeddings (family ``handmade``). ``--kind
handmade`` writes the same features as ``chada embed --model handmade`` (one implementation, run by
the same resumable loop).
"""

from __future__ import annotations

import argparse

KINDS = ("shortcut", "handmade", "cellprofiler", "tissue", "cp_measure")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "features",
        help="write hand-made baseline features (shortcut, handmade, cellprofiler, tissue, cp_measure) of a manifest",
        description=(
            "Compute hand-made features of every image of a manifest and write them as an embeddings .npz "
            "(features 'cls' and 'all', meta from the manifest). shortcut: intensity statistics + nuclei "
            "count/density (also written as meta columns); handmade: statistics, histograms, texture, "
            "per-cell shape; cellprofiler: per-cell nucleus/cytoplasm features (median, MAD); tissue: "
            "H&E stain separation + nuclei layout (RGB histology); cp_measure: CellProfiler's per-object "
            "measurements on each row's label image (objects_file column), one output row per object "
            "(.parquet or .npz). Resumable (not cp_measure): re-run the same command."
        ),
    )
    from chada.cli import options as o

    o.add_manifest(p)
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--out", required=True, help="output .npz (cp_measure: .parquet or .npz)")
    o.add_image_size(p)
    p.add_argument(
        "--layout",
        default="pooled",
        choices=["pooled", "per_channel"],
        help="pooled: mean/std/max over channels (any channel count); per_channel: one block per channel "
        "(handmade and cellprofiler; fixed channel set only)",
    )
    p.add_argument("--object-name", default="Cells", help="cp_measure: compartment prefix of the columns (default Cells)")
    p.add_argument("--intensity-max", type=float, default=65535.0,
                   help="cp_measure: pixel value that maps to 1 in every image (default 65535, 16-bit)")  # fmt: skip
    o.add_normalize(p)
    o.add_nan_policy(p)
    p.add_argument("--no-resume", action="store_true", help="discard partial results of an earlier run")
    o.add_verify_inputs(p)
    o.add_quiet(p)
    o.add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from chada.cli import options as o
    from chada.io import check_writable_file
    from chada.locks import hold_output

    check_writable_file(args.out, what="--out")  # before any image is read
    hold_output(args.out, folder=False)
    if args.kind == "cp_measure":
        from chada.encode.cp_measure import cp_measure_for_manifest

        table, names = cp_measure_for_manifest(args.manifest, args.out, args.object_name, args.intensity_max,
                                               progress=not args.quiet)  # fmt: skip
        print(f"wrote {args.out}: {len(table)} objects x {len(names)} cp_measure features")
        return 0
    from chada.encode import handmade

    emb = handmade.features_for_manifest(
        args.manifest, args.kind, args.out, layout=args.layout,
        image=o.image_options(args, base=handmade.FEATURES_IMAGE), run=o.run_options(args, base=handmade.FEATURES_RUN),
        output=o.output_options(args, base=handmade.FEATURES_OUTPUT),
    )  # fmt: skip
    x = emb.get("cls")
    print(
        f"wrote {args.out}: {x.shape[0]} images x {x.shape[1]} {args.kind} features "
        f"({emb.info['seconds']:.1f} s)"
    )
    return 0
