"""``chada segment``: apply a dense probe trained by ``chada evaluate`` (a ``dense:`` task) to new images.

Examples::

    chada segment --model runs/q/teacher --image nuclei.tif --channel-names Nuclei \\
        --probe results/probes/dsb2018_nuclei/chada_vit_mlp --out mask.png
    chada segment --model handmade --image a.tif b.tif --channel-names MarkerA,MarkerB \\
        --probe results/probes/synth_relation/handmade_mlp.json --out mask.png

The image is normalised as a whole, cut into the probe's tiles, probed tile by tile and put back
together; ``--out`` gets a 0/255 mask (``.png`` or ``.tif``), ``--probability`` optionally the
foreground probability as a float32 TIFF. The probe is ``STEM.safetensors`` + ``STEM.json`` (give
either file or the stem); it names the exact model it was fit on, and another model is refused.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from chada.cli import options as o

    p = subparsers.add_parser(
        "segment",
        help="apply a trained dense probe (chada evaluate, dense: task) to images: a foreground mask",
        description=(
            "Run the frozen model a probe was trained on over one image (one file per channel, or one "
            "multi-channel file), apply the probe tile by tile and write the mask."
        ),
    )
    o.add_model(p, handmade=True)
    o.add_seed(p)
    o.add_precision(p)
    p.add_argument(
        "--image",
        nargs="+",
        required=True,
        metavar="FILE",
        help="one file per channel, or one multi-channel file",
    )
    p.add_argument(
        "--channel-names",
        nargs="+",
        default=None,
        metavar="A,B",
        help="the image's channel names, comma- or space-separated (matched to the probe's by name; "
        "default: the probe's order)",
    )
    p.add_argument("--probe", required=True, metavar="PROBE", help="STEM.safetensors, STEM.json or STEM")
    p.add_argument(
        "--threshold", type=float, default=None, help="probability threshold (default: the probe's, 0.5)"
    )
    p.add_argument("--out", required=True, help="the mask: .png or .tif (0 / 255)")
    p.add_argument("--probability", default=None, metavar="FILE.tif", help="also write the probability map")
    o.add_debug(p)
    p.set_defaults(func=run)


def _names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _check_out(path: str, suffixes: tuple[str, ...], what: str) -> None:
    from pathlib import Path

    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {path}: the file name must end in {' or '.join(suffixes)}")
    if p.parent and not p.parent.exists():
        raise FileNotFoundError(f"{what} {path}: folder {p.parent} does not exist")


def _write(path: str, array, as_mask: bool) -> None:  # noqa: ANN001 - numpy array
    import io
    from pathlib import Path

    import numpy as np

    from chada.io import atomic_write_bytes

    buf = io.BytesIO()
    if Path(path).suffix.lower() == ".png":
        from PIL import Image

        Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    else:
        import tifffile

        tifffile.imwrite(buf, array.astype(np.uint8 if as_mask else np.float32), compression="zlib")
    atomic_write_bytes(path, buf.getvalue())


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from chada.cli.attention import load_image
    from chada.encode.encoders import resolve_model
    from chada.locks import hold_output
    from chada.models.precision import precision_name, resolve_precision
    from chada.tasks.dense.probe import load_probe, order_channels, segment_image

    if args.threshold is not None and not 0 <= args.threshold <= 1:  # NaN fails too
        raise ValueError(
            f"--threshold {args.threshold}: a probability threshold lies in [0, 1] (default: the probe's)"
        )
    _check_out(args.out, (".png", ".tif", ".tiff"), "--out")
    if args.probability:
        _check_out(args.probability, (".tif", ".tiff"), "--probability")
    hold_output(args.out, folder=False)
    probe = load_probe(args.probe)
    raw, _ = load_image(args.image, None, None)
    order = order_channels(probe, _names(args.channel_names), raw.shape[0])
    module, _info = resolve_model(args.model, seed=args.seed)
    dtype, reason = resolve_precision(args.precision, "cpu")  # the model runs on the CPU
    prob = segment_image(probe, module, raw[order], model_label=f"--model {args.model}", dtype=dtype)
    threshold = float(probe.meta.get("threshold", 0.5) if args.threshold is None else args.threshold)
    mask = prob > threshold
    _write(args.out, np.where(mask, 255, 0), as_mask=True)
    if args.probability:
        _write(args.probability, prob, as_mask=False)
    print(
        f"{args.out}: {mask.shape[0]}x{mask.shape[1]} mask, {100 * mask.mean():.1f} % foreground "
        f"(probe {probe.meta.get('task')}/{probe.meta.get('model_label')}, {probe.meta.get('mask')}, "
        f"threshold {threshold:g})"
    )
    if module is not None:  # said once the probe accepted the model: a refused model's error stays one line
        trained = probe.meta.get("precision")
        other = trained and trained != precision_name(dtype)
        print(
            f"precision: {reason}" + (f"; note: the probe was fitted on {trained} features" if other else "")
        )
    return 0
