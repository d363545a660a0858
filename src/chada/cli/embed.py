"""``chada embed``: frozen embeddings of every image of a manifest into one ``.npz``.

Examples::

    chada embed --model runs/chada/final --manifest data/manifest.csv --out emb/chada.npz
    chada embed --model one_channel_vit_tiny --seed 3 --manifest m.csv --out emb/untrained.npz
    chada embed --model handmade --manifest m.csv --out emb/handmade.npz

Re-running the same command after an interruption resumes from ``<out>.parts/``: finished chunks
are reused when the settings and each image's files (size + mtime, or a content hash with
``--verify-inputs hash``) are unchanged; chunks of changed images are recomputed.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="write frozen-encoder embeddings (CLS and all-token) of a manifest's images",
        description=(
            "Embed every image of a manifest with a frozen encoder and write features + metadata to one "
            ".npz. --model is a saved model folder, a registered model name (random weights from --seed: "
            "the untrained baselines; see `chada info`) or 'handmade' (the same features as `chada "
            "features --kind handmade`). Resumable: re-run the same command."
        ),
    )
    from chada.cli import options as o

    o.add_model(p, handmade=True)
    o.add_manifest(p)
    p.add_argument("--out", required=True, help="output .npz")
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
    p.add_argument("--chunk-batches", type=int, default=20, help="batches per resumable chunk")
    p.add_argument("--no-resume", action="store_true", help="discard partial results of an earlier run")
    o.add_verify_inputs(p)
    o.add_quiet(p)
    o.add_debug(p)
    o.add_channel_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from collections import Counter

    from chada.cli.options import channel_kwargs, nan_kwargs, precision_dtype
    from chada.io import check_writable_file
    from chada.locks import hold_output

    check_writable_file(args.out, what="--out")  # before any model is loaded
    hold_output(args.out, folder=False)  # one writer: a second run (or --no-resume) must not touch live chunks
    nan = nan_kwargs(args)
    dtype = precision_dtype(args) if args.model != "handmade" else None
    from chada.data.channels import describe_channels
    from chada.encode.embed import embed_manifest

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    emb = embed_manifest(
        args.model,
        args.manifest,
        args.out,
        batch_size=args.batch_size,
        pools=args.pool,
        image_size=args.image_size,
        num_workers=args.workers,
        resume=not args.no_resume,
        seed=args.seed,
        device=args.device,
        datasets=args.dataset,
        split=args.split,
        normalize=args.normalize,
        chunk_batches=args.chunk_batches,
        progress=not args.quiet,
        verify_inputs=args.verify_inputs,
        **({} if dtype is None else {"dtype": dtype}),
        **nan,
        **channel_kwargs(args),
    )
    dims = ", ".join(f"{k} [{v.shape[0]}, {v.shape[1]}]" for k, v in emb.features.items())
    print(f"wrote {args.out}: {len(emb)} images; {dims}; {emb.info['seconds']:.1f} s")
    print(f"image size: {_size_text(emb.info)}")
    used = Counter(describe_channels(n, s) for n, s in zip(emb.meta["channel_names"], emb.meta["channel_slots"]))
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
