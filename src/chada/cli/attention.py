"""``chada attention``: last-layer CLS attention per channel of one multiplexed image, as a figure.

Examples::

    chada attention --model runs/chada/final --image dapi.tif actin.tif tub.tif \\
        --channel-names DAPI Actin Tubulin --out attn.png
    chada attention --model runs/chada/final --manifest data/manifest.csv --image-id img_0007 \\
        --compare runs/onechannel/final --out attn.png

Writes ``attn.png`` + ``attn.svg`` and prints the per-channel attention mass and the inter-channel
matrix.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from chada.cli import options as o

    p = subparsers.add_parser(
        "attention",
        help="plot a model's last-layer CLS attention per channel of one image (+ inter-channel matrix)",
        description=(
            "For one multiplexed image: one row per channel with the channel image and the CLS token's "
            "last-layer attention over that channel's patches (per head and averaged), plus the matrix of "
            "attention each channel's tokens send to every other channel. --compare draws a second model "
            "side by side. Writes OUT as .png and .svg."
        ),
    )
    o.add_model(p, seed=False)
    src = p.add_argument_group("image (either FILES or --manifest + --image-id)")
    src.add_argument(
        "--image",
        nargs="+",
        default=None,
        metavar="FILE",
        help="one file per channel, or one multi-channel file",
    )
    o.add_manifest(src, required=False, help="manifest CSV/Parquet to take the image from")
    src.add_argument("--image-id", default=None, help="image_id of the manifest row")
    p.add_argument(
        "--channel-names",
        nargs="+",
        default=None,
        metavar="NAME",
        help="row labels (default: the manifest's channel_names, else ch0, ch1, ...)",
    )
    p.add_argument("--compare", default=None, metavar="M2", help="a second model drawn side by side")
    p.add_argument(
        "--labels", nargs="+", default=None, metavar="NAME", help="display names of --model (and --compare)"
    )
    o.add_image_size(
        p,
        metavar="S",
        help="resize to S x S (a multiple of the patch size); default: native size, shrunk to "
        "a multiple of the patch size if needed",
    )
    o.add_normalize(p)
    o.add_precision(p)
    p.add_argument(
        "--channel-ids",
        nargs="+",
        type=o.at_least(0),
        default=None,
        metavar="SLOT",
        help="channel-embedding slot of each channel (default 0..C-1)",
    )
    p.add_argument("--upsample", default="nearest", choices=["nearest", "bilinear"])
    p.add_argument("--no-heads", action="store_true", help="draw only the head average")
    p.add_argument("--title", default=None)
    p.add_argument("--out", required=True, help="output picture (.png; the .svg is written next to it)")
    o.add_debug(p)
    p.set_defaults(func=run)


def load_image(
    files: list[str] | None, manifest: str | None, image_id: str | None
) -> tuple[object, list[str] | None]:
    """Raw ``[C, H, W]`` float32 numpy image and the manifest's channel names (None for plain files)."""
    from pathlib import Path

    if files and manifest:
        raise ValueError("give either --image FILES or --manifest with --image-id, not both")
    if manifest:
        if image_id is None:
            raise ValueError("--manifest needs --image-id")
        from chada.data.manifest import load_manifest, read_row_image, row_channel_names

        df = load_manifest(manifest)
        rows = df[df["image_id"].astype(str) == str(image_id)]
        if rows.empty:
            some = ", ".join(df["image_id"].astype(str).head(5))
            raise ValueError(f"image_id {image_id!r} not in {manifest} (first ids: {some})")
        row = rows.iloc[0].to_dict()
        return read_row_image(row, Path(manifest).parent), row_channel_names(row) or None
    if not files:
        raise ValueError(
            "give --image FILES (one per channel, or one multi-channel file) or --manifest + --image-id"
        )
    from chada.data.readers import read_channels, read_image

    return (read_image(files[0]) if len(files) == 1 else read_channels(files)), None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    import chada
    from chada.cli.options import precision_dtype
    from chada.data.normalize import normalize_channels
    from chada.io import check_writable_file
    from chada.locks import hold_output
    from chada.models.precision import autocast
    from chada.viz.attention import (
        channel_mass_table,
        compute_model_attention,
        fit_image_size,
        matrix_table,
    )
    from chada.viz.attention_figure import plot_attention_grid
    from chada.viz.style import figure_paths

    figure_paths(args.out)  # reject a bad suffix before any work
    check_writable_file(args.out, what="--out")
    hold_output(args.out, folder=False)
    raw, manifest_names = load_image(args.image, args.manifest, args.image_id)
    C = raw.shape[0]
    names = args.channel_names or manifest_names or [f"ch{i}" for i in range(C)]
    if len(names) != C:
        raise ValueError(f"{len(names)} channel names ({', '.join(names)}) for an image with {C} channels")
    if args.channel_ids is not None and len(args.channel_ids) != C:
        raise ValueError(f"{len(args.channel_ids)} --channel-ids for {C} channels")
    image = torch.from_numpy(normalize_channels(raw, args.normalize))
    dtype = precision_dtype(args, "cpu")  # the models run on the CPU

    specs = [args.model] + ([args.compare] if args.compare else [])
    labels = list(args.labels) if args.labels else [Path(s).name or s for s in specs]
    if len(labels) != len(specs):
        raise ValueError(f"{len(labels)} --labels for {len(specs)} models")
    if len(labels) == 2 and labels[0] == labels[1]:
        labels = [f"{labels[0]} (1)", f"{labels[1]} (2)"]
    results = []
    fitted = None
    for spec, label in zip(specs, labels):
        model = chada.load_model(spec).eval()
        patch = getattr(getattr(model, "config", None), "patch_size", None) or 1
        img = fit_image_size(image, patch, args.image_size)
        if fitted is None:
            fitted = img
        elif img.shape != fitted.shape:
            # Both models must see the same pixels; the first model's size wins when patch sizes differ.
            raise ValueError(
                f"models need different image sizes ({tuple(fitted.shape[1:])} vs {tuple(img.shape[1:])}); "
                "pass --image-size S with S a multiple of both patch sizes"
            )
        print(f"{label}: image {C}x{img.shape[1]}x{img.shape[2]}, patch {patch}")
        with torch.inference_mode(), autocast(dtype, "cpu"):  # maps come back as float32
            results.append(
                compute_model_attention(model, img, label, args.channel_ids, upsample=args.upsample)
            )

    paths = plot_attention_grid(
        fitted, results, names, args.out, title=args.title, show_heads=not args.no_heads
    )
    print("\nattention mass per channel (last layer, CLS query, mean over heads):")
    print(channel_mass_table(results, names))
    for r in results:
        if r.map_note:
            print(f"note: {r.map_note}")
        if r.matrix is not None:
            print(
                f"\n{r.label}: inter-channel attention (row = query channel, column = key channel; rows sum to 1)"
            )
            print(matrix_table(r.matrix, names))
        elif r.matrix_note:
            print(f"note: {r.matrix_note}")
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0
