"""``chada embed``: frozen embeddings of every image (or cell) of a manifest into one feature file.

Examples::

    chada embed --model runs/chada/final --manifest data/manifest.csv --out emb/chada.npz
    chada embed --model one_channel_vit_tiny --seed 3 --manifest m.csv --out emb/untrained.npz
    chada embed --model handmade --manifest m.csv --out emb/handmade.npz

    chada embed --model chada_vit_test --manifest plate.csv --objects --crop-size 64 --out cells.parquet
    torchrun --nproc_per_node=4 -m chada.cli embed ... --out cells.parquet
    chada embed ... --shard 3/8 --out cells.parquet     # one of 8 jobs; the last one merges
    chada embed --merge cells.parquet                   # or merge later

The format follows the suffix of ``--out``: ``.npz``, ``.parquet`` (streamed row groups), ``.h5ad``.
Re-running the same command after an interruption resumes from ``<out>.parts/``: finished chunks
are reused when the settings and each image's files (size + mtime, or a content hash with
``--verify-inputs hash``) are unchanged; chunks of changed images are recomputed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="write frozen-encoder embeddings (CLS and all-token) of a manifest's images",
        description=(
            "Embed every image (or, with --objects, every cell) of a manifest with a frozen encoder and "
            "write features + metadata to one .npz, .parquet or .h5ad (by the suffix of --out). --model is a saved model folder, a registered model name (random weights from --seed: "
            "the untrained baselines; see `chada info`) or 'handmade' (the same features as `chada "
            "features --kind handmade`). Resumable: re-run the same command."
        ),
    )
    from chada.cli import options as o

    o.add_model(p, handmade=True, required=False)
    o.add_manifest(p, required=False)
    p.add_argument("--out", default=None,
                   help="output .npz, .parquet (streamed; pandas/polars/pycytominer) or .h5ad (AnnData)")  # fmt: skip
    o.add_objects(p)
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="encode the I-th of N blocks of rows into OUT's shard file (job arrays); the last "
                   "shard to finish merges them (under torchrun the ranks are the shards)")  # fmt: skip
    p.add_argument("--merge", default=None, metavar="OUT",
                   help="only merge OUT's shard files into OUT (no --model / --manifest needed)")  # fmt: skip
    o.add_batch_size(p, default=32)
    p.add_argument(
        "--image-size",
        type=o.parse_image_size,
        default="model",
        metavar="N|native|model",
        help="resize every image to N x N, or 'native' to keep each image's size (default: the size a "
        "pretrained model folder recorded, else native)",
    )
    p.add_argument(
        "--pool",
        nargs="+",
        default=["cls", "all"],
        help="feature kinds: cls, all (CLS + mean patch token); one_channel_vit also mean, mean_all",
    )
    o.add_seed(p)
    o.add_workers(p)
    o.add_device(p)
    o.add_precision(p)
    o.add_dataset_filter(p)
    p.add_argument("--split", nargs="+", default=None, help="embed only these splits (train/val/test)")
    o.add_normalize(p)
    o.add_nan_policy(p)
    p.add_argument("--chunk-batches", type=o.at_least(1), default=20,
                   help="batches per resumable chunk (with --objects: fields per chunk)")  # fmt: skip
    p.add_argument("--no-resume", action="store_true", help="discard partial results of an earlier run")
    o.add_verify_inputs(p)
    o.add_quiet(p)
    o.add_debug(p)
    o.add_channel_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from collections import Counter

    from chada.cli import options as o
    from chada.encode import shards
    from chada.io import check_writable_file
    from chada.locks import hold_output

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.merge:
        hold_output(args.merge, folder=False)
        print(f"wrote {shards.merge_shards(args.merge)}")
        return 0
    missing = [f"--{k}" for k in ("model", "manifest", "out") if not getattr(args, k)]
    if missing:
        raise ValueError(f"chada embed needs {', '.join(missing)} (or --merge OUT to merge shard files)")
    check_writable_file(args.out, what="--out")  # before any model is loaded
    image = o.image_options(args)
    objects = o.object_options(args)
    shard, device = shards.torchrun_shard(args.device)
    distributed = shard is not None
    if args.shard is not None:
        if distributed:
            raise ValueError("--shard and torchrun both split the rows; use one of them")
        shard = shards.parse_shard(args.shard)
    for path in lock_paths(args.out, shard, distributed):
        hold_output(path, folder=False)
    dtype = o.precision_dtype(args, device) if args.model != "handmade" else None
    from chada.data.channels import describe_channels
    from chada.encode.embed import embed_manifest

    emb = embed_manifest(args.model, args.manifest, args.out, args.pool, image=image,
                         channels=o.channel_options(args), run=o.run_options(args, device, dtype),
                         select=o.selection(args), output=o.output_options(args, shard), objects=objects)  # fmt: skip
    what = "cells" if objects is not None else "images"
    dims = ", ".join(f"{k} [{len(emb)}, {d}]" for k, d in emb.info["feature_dims"].items())
    written = args.out if shard is None else shards.shard_path(args.out, shard)
    print(f"wrote {written}: {len(emb)} {what}; {dims}; {emb.info['seconds']:.1f} s")
    print(f"image size: {_size_text(emb.info)}")
    if shard is not None:
        merged = shards.finish_shard(args.out, shard, device, distributed)
        if merged is not None:
            print(f"merged the {shard[1]} shard files into {merged}")
        elif not distributed:
            print(
                f"shard {shard[0]}/{shard[1]} done; the last shard merges (or: chada embed --merge {args.out})"
            )
    if not hasattr(emb, "features"):  # a streamed Parquet file: no table in memory to count channels in
        return 0
    used = Counter(
        describe_channels(n, s) for n, s in zip(emb.meta["channel_names"], emb.meta["channel_slots"])
    )
    print("channels used (name@slot):")
    for combo, n in used.most_common():
        print(f"  {n:6d} image(s): {combo}")
    if emb.info.get("pool_fallback"):
        print(f"note: {emb.info['note']} {emb.info['pool_fallback']}")
    return 0


def _size_text(info: dict) -> str:
    size, source = info.get("image_size"), info.get("image_size_source")
    if size is None:
        return "native (each image keeps its size)"
    why = {"model": "recorded by the model at pretraining; --image-size to change", "given": "--image-size"}
    return f"{size} x {size} px ({why.get(source, source)})"


def lock_paths(out: str, shard: tuple[int, int] | None, distributed: bool) -> list[Path]:
    """The files one ``chada embed`` run takes (one writer each: a second run, or ``--no-resume``, must
    not touch live chunks). Shards run side by side by design, so each takes only its own shard file;
    a one-process run, and rank 0 of a torchrun (which writes the final file), take OUT too."""
    from chada.encode.shards import shard_path

    if shard is None:
        return [Path(out)]
    return ([Path(out)] if distributed and shard[0] == 0 else []) + [shard_path(out, shard)]
