"""The options several sub-commands share, defined once: same flag, same default, same help everywhere.

Each ``add_*`` function adds one option (or one small group) to a sub-command's parser::

    p = subparsers.add_parser("embed", ...)
    add_model(p, handmade=True)
    add_manifest(p)
    add_image_size(p)
    add_channel_args(p)
    add_device(p)
    add_batch_size(p, default=32)
    add_quiet(p)
    add_debug(p)

and the handler reads them back with the matching helpers: one builder per option bundle of
:mod:`chada.encode.options` (:func:`image_options`, :func:`channel_options`, :func:`run_options`,
:func:`selection`, :func:`output_options`), which check the values once. A new shared
option (``--precision``, say) is one more ``add_precision(p)`` here, called from each sub-command that
runs a model, plus one reader if its value needs turning into arguments: ``--precision`` is
:func:`add_precision` and :func:`precision_dtype`.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from chada.config_reader import at_least

__all__ = [
    "NORMALIZE_CHOICES",
    "at_least",
    "add_batch_size",
    "add_channel_args",
    "add_dataset_filter",
    "add_debug",
    "add_device",
    "add_image_size",
    "add_manifest",
    "add_model",
    "add_nan_policy",
    "add_normalize",
    "add_objects",
    "add_precision",
    "add_quiet",
    "add_seed",
    "add_workers",
    "add_verify_inputs",
    "channel_kwargs",
    "channel_options",
    "image_options",
    "nan_kwargs",
    "object_options",
    "output_options",
    "parse_image_size",
    "precision_dtype",
    "run_options",
    "selection",
]

NORMALIZE_CHOICES = (
    "percentile",
    "minmax",
    "none",
)  # chada.encode.options has the same (no torch import here)

_Parser = argparse.ArgumentParser | argparse._ArgumentGroup


def add_model(p: _Parser, *, handmade: bool = False, seed: bool = True, required: bool = True) -> None:
    """``--model``: a saved model folder or a registered name (random weights), or ``handmade``.

    ``seed``: the sub-command also has :func:`add_seed`'s ``--seed``.
    """
    what = "saved model folder, registered name (random weights" + (" from --seed)" if seed else ")")
    p.add_argument("--model", required=required, help=what + (", or 'handmade'" if handmade else ""))


def add_seed(p: _Parser) -> None:
    """``--seed`` of the random weights a registered model name is built with (the untrained baselines)."""
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights of a registered model name"
    )


def add_manifest(p: _Parser, *, required: bool = True, help: str | None = None) -> None:
    """``--manifest``: the manifest CSV/Parquet (see ``chada data check``)."""
    p.add_argument("--manifest", required=required, default=None, help=help or "manifest CSV/Parquet")


def add_dataset_filter(p: _Parser) -> None:
    """``--dataset``: keep only these datasets of the manifest."""
    p.add_argument("--dataset", nargs="+", default=None, help="keep only these datasets of the manifest")


def add_image_size(
    p: _Parser, *, default: int | None = None, help: str | None = None, metavar: str | None = None
) -> None:
    """``--image-size``: resize every image to this square size (``None``: native size)."""
    text = help or (
        "resize images to this square size (default: native size)"
        if default is None
        else f"resize every image to this square size (default {default})"
    )
    p.add_argument("--image-size", type=at_least(1), default=default, metavar=metavar, help=text)


def parse_image_size(text: str) -> int | str | None:
    """``--image-size`` of ``chada embed``: a positive int, ``native`` (keep each image's size) or
    ``model`` (the size the model recorded)."""
    if text.strip().lower() == "native":
        return None
    if text.strip().lower() == "model":
        return "model"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, 'native' or 'model', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, 'native' or 'model', got {text!r}")
    return value


def add_nan_policy(p: _Parser) -> None:
    """``--nan-policy`` / ``--nan-fill``: what to do with NaN/inf pixels (see :func:`nan_kwargs`)."""
    p.add_argument(
        "--nan-policy",
        choices=("error", "replace"),
        default="error",
        help="NaN/inf pixels: error (default; names the image, channel and file) or replace them (one "
        "warning per image touched) by --nan-fill",
    )
    p.add_argument(
        "--nan-fill",
        type=float,
        default=None,
        metavar="VALUE",
        help="with --nan-policy replace: the value NaN/inf pixels get, before normalisation (default: "
        "the channel's finite median)",
    )


def nan_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``nan_policy`` / ``nan_fill`` keyword arguments; ``--nan-fill`` without ``replace`` is refused."""
    if args.nan_fill is not None and args.nan_policy != "replace":
        raise ValueError("--nan-fill only applies with --nan-policy replace")
    if args.nan_fill is not None and not math.isfinite(args.nan_fill):
        raise ValueError(f"--nan-fill must be a finite number, got {args.nan_fill}")
    return {"nan_policy": args.nan_policy, "nan_fill": args.nan_fill}


def add_objects(p: _Parser) -> None:
    """``--objects`` and its crop options: one embedding per cell of each row's label image."""
    g = p.add_argument_group("single cells (--objects)")
    g.add_argument("--objects", action="store_true",
                   help="one row per object of each manifest row's label image (column objects_file; 0 = "
                   "background): a crop centred on the object's centroid")  # fmt: skip
    g.add_argument("--crop-size", type=at_least(1), default=None, metavar="N",
                   help="crop side in field pixels (default: the model's image size); crops are resized to "
                   "the model's size")  # fmt: skip
    g.add_argument(
        "--mask-neighbours", action="store_true", help="zero the pixels of other objects in a crop"
    )
    g.add_argument(
        "--min-area", type=at_least(0), default=None, metavar="PX", help="skip objects under PX pixels"
    )
    g.add_argument(
        "--max-area", type=at_least(1), default=None, metavar="PX", help="skip objects over PX pixels"
    )
    g.add_argument("--skip-border", action="store_true", help="skip objects touching the field's edge")
    g.add_argument("--objects-column", default="objects_file", help="manifest column of the label images")


def object_options(args: argparse.Namespace) -> Any:
    """The :class:`chada.data.objects.ObjectOptions` of ``--objects`` (None without it); crop options
    without ``--objects`` are refused rather than ignored."""
    from chada.data.objects import ObjectOptions

    given = [f for f in ("crop_size", "min_area", "max_area") if getattr(args, f) is not None]
    given += [f for f in ("mask_neighbours", "skip_border") if getattr(args, f)]
    if not args.objects:
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} only applies with --objects")
        return None
    for f in ("crop_size", "min_area", "max_area"):
        v = getattr(args, f)
        if v is not None and v < (1 if f == "crop_size" else 0):
            raise ValueError(f"--{f.replace('_', '-')} must be positive, got {v}")
    return ObjectOptions(crop_size=args.crop_size, mask_neighbours=args.mask_neighbours, min_area=args.min_area,
                         max_area=args.max_area, skip_border=args.skip_border, column=args.objects_column)  # fmt: skip


def add_verify_inputs(p: _Parser) -> None:
    """``--verify-inputs``: how a resumed run checks that finished chunks' image files are unchanged."""
    p.add_argument(
        "--verify-inputs",
        choices=("stat", "hash"),
        default="stat",
        help="on resume, a finished chunk is reused only if its images' files are unchanged: stat (size + "
        "modification time, default) or hash (SHA-256 of every file; reads all of them)",
    )


def add_normalize(p: _Parser, *, help: str | None = None) -> None:
    """``--normalize``: per-channel intensity normalisation, as in training."""
    p.add_argument(
        "--normalize",
        default="percentile",
        choices=list(NORMALIZE_CHOICES),
        help=help or "per-channel intensity normalisation (default percentile, as in training)",
    )


def add_channel_args(p: argparse.ArgumentParser) -> None:
    """``--channel-order``, ``--strict-channels``, ``--channel-alias`` (see :mod:`chada.data.channels`)."""
    from chada.data.channel_names import add_channel_args as _add

    _add(p)


def channel_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed channel options as the ``channel_order`` / ``unknown_channels`` / ``channel_aliases``
    keyword arguments of :func:`chada.encode.embed.embed_manifest` and its peers."""
    from chada.data.channels import parse_channel_order

    return {
        "channel_order": parse_channel_order(args.channel_order),
        "unknown_channels": "error" if args.strict_channels else "warn",
        "channel_aliases": dict(args.channel_alias or []),
    }


def add_device(p: _Parser) -> None:
    """``--device``: where the model runs."""
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")


def add_precision(p: _Parser, *, default: str = "auto", why: str | None = None) -> None:
    """``--precision``: the numeric precision of the model's forward pass (see :mod:`chada.models.precision`).

    ``why``: a sentence on a default other than ``auto`` (the quickstart's fp32).
    """
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=default,
        help="precision of the model's forward pass: bf16 (autocast; weights and outputs stay float32) "
        "runs faster on CPUs with amx_bf16 or avx512_bf16 (2.4-2.6x fp32 for chada_vit_moyen at 224 px on "
        "an AMD Zen 5; README, Speed) and on CUDA devices with bf16, with embeddings at cosine >= 0.999 to "
        "fp32; auto picks bf16 where the hardware has it, else fp32, and says which (default "
        f"{default}" + (f"; {why})" if why else ")"),
    )


def precision_dtype(args: argparse.Namespace, device: str | None = None) -> Any:
    """The ``torch.dtype`` of ``--precision`` on ``device`` (default ``--device``, else cpu); the choice
    and its reason are printed as one line on stderr, so ``auto`` always says what it picked."""
    import sys

    from chada.models.precision import resolve_precision

    where = device or getattr(args, "device", None) or "cpu"
    dtype, reason = resolve_precision(args.precision, where)
    print(f"precision: {reason}", file=sys.stderr)
    return dtype


def add_batch_size(p: _Parser, *, default: int = 32) -> None:
    """``--batch-size``: images per forward pass."""
    p.add_argument(
        "--batch-size", type=at_least(1), default=default, help=f"images per forward pass (default {default})"
    )


def add_workers(p: _Parser) -> None:
    """``--workers``: DataLoader processes reading images."""
    p.add_argument(
        "--workers", type=at_least(0), default=0, help="DataLoader workers reading images (default 0)"
    )


def add_quiet(p: _Parser) -> None:
    """``--quiet``: no progress bars."""
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_debug(p: _Parser) -> None:
    """``--debug``: show the full traceback of an error."""
    p.add_argument("--debug", action="store_true", help="show tracebacks")


# The bundles of chada.encode.options, built once from a parsed command line. A sub-command without
# one of the flags gets the value of ``base`` (the command's own defaults, e.g. chada features' 64
# images per chunk), so every command builds them the same way.


def image_options(args: argparse.Namespace, base: Any = None) -> Any:
    """:class:`chada.encode.options.ImageOptions` of ``--image-size``, ``--normalize``, ``--nan-policy``,
    ``--nan-fill`` (``--nan-fill`` without ``replace`` is refused, :func:`nan_kwargs`); a flag the
    command lacks keeps ``base``'s value (default: the bundle's defaults)."""
    from chada.encode.options import ImageOptions

    base = base or ImageOptions()
    nan = (
        nan_kwargs(args)
        if hasattr(args, "nan_policy")
        else {"nan_policy": base.nan_policy, "nan_fill": base.nan_fill}
    )
    return ImageOptions(size=getattr(args, "image_size", base.size), normalize=getattr(args, "normalize", base.normalize),
                        **nan)  # fmt: skip


def channel_options(args: argparse.Namespace) -> Any:
    """:class:`chada.encode.options.ChannelOptions` of ``--channel-order``, ``--strict-channels``,
    ``--channel-alias`` (:func:`channel_kwargs`)."""
    from chada.encode.options import ChannelOptions

    kw = channel_kwargs(args)
    return ChannelOptions(
        order=kw["channel_order"], unknown=kw["unknown_channels"], aliases=kw["channel_aliases"]
    )


def run_options(
    args: argparse.Namespace, device: str | None = None, dtype: Any = None, base: Any = None
) -> Any:
    """:class:`chada.encode.options.RunOptions` of ``--batch-size``, ``--workers``, ``--device`` (or
    ``device``: a torchrun rank's), ``dtype`` (:func:`precision_dtype`; None: ``base``'s), ``--seed``,
    ``--quiet``; a flag the command lacks keeps ``base``'s value (default: the bundle's defaults)."""
    from chada.encode.options import RunOptions

    base = base or RunOptions()
    return RunOptions(
        batch_size=getattr(args, "batch_size", base.batch_size),
        num_workers=getattr(args, "workers", base.num_workers),
        device=device or getattr(args, "device", base.device),
        dtype=base.dtype if dtype is None else dtype,
        seed=getattr(args, "seed", base.seed),
        progress=not args.quiet if hasattr(args, "quiet") else base.progress,
    )


def selection(args: argparse.Namespace) -> Any:
    """:class:`chada.encode.options.Selection` of ``--dataset`` and ``--split``."""
    from chada.encode.options import Selection

    return Selection(datasets=getattr(args, "dataset", None), split=getattr(args, "split", None))


def output_options(args: argparse.Namespace, shard: tuple[int, int] | None = None, base: Any = None) -> Any:
    """:class:`chada.encode.options.OutputOptions` of ``--no-resume``, ``--chunk-batches``,
    ``--verify-inputs`` and the ``shard`` of ``--shard`` or torchrun; a flag the command lacks keeps
    ``base``'s value (default: the bundle's defaults)."""
    from chada.encode.options import OutputOptions

    base = base or OutputOptions()
    resume = not args.no_resume if hasattr(args, "no_resume") else base.resume
    return OutputOptions(resume=resume, chunk_batches=getattr(args, "chunk_batches", base.chunk_batches),
                         verify_inputs=getattr(args, "verify_inputs", base.verify_inputs), shard=shard)  # fmt: skip
