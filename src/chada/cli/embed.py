"""``chada embed``: frozen embeddings of every image of a manifest into one ``.npz``.

Examples::

    chada embed --model runs/chada/final --manifest data/manifest.csv --out emb/chada.npz
    chada embed --model one_channel_vit_tiny --seed 3 --manifest m.csv --out emb/untrained.npz
    chada embed --model handmade --manifest m.csv --out emb/handmade.npz

Re-running the same command after an interruption resumes from ``<out>.parts/``.
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
            "the untrained baselines; see `chada info`) or 'handmade'. Resumable: re-run the same command."
        ),
    )
    p.add_argument("--model", required=True, help="saved model folder, registered name, or 'handmade'")
    p.add_argument("--manifest", required=True, help="manifest CSV/Parquet")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--image-size", type=int, default=None, help="resize images to this square size (default: native size)"
    )
    p.add_argument(
        "--pool",
        nargs="+",
        default=["cls", "all"],
        help="feature kinds: cls, all (CLS + mean patch token); one_channel_vit also mean, mean_all",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights of a registered model name")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dataset", nargs="+", default=None, help="embed only these datasets of the manifest")
    p.add_argument("--split", nargs="+", default=None, help="embed only these splits (train/val/test)")
    p.add_argument("--normalize", default="percentile", choices=["percentile", "minmax", "none"])
    p.add_argument("--chunk-batches", type=int, default=20, help="batches per resumable chunk")
    p.add_argument("--no-resume", action="store_true", help="discard partial results of an earlier run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    from chada.data.channels import add_channel_args

    add_channel_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from collections import Counter

    from chada.data.channels import describe_channels, parse_channel_order
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
        channel_order=parse_channel_order(args.channel_order),
        unknown_channels="error" if args.strict_channels else "warn",
        channel_aliases=dict(args.channel_alias or []),
    )
    dims = ", ".join(f"{k} [{v.shape[0]}, {v.shape[1]}]" for k, v in emb.features.items())
    print(f"wrote {args.out}: {len(emb)} images; {dims}; {emb.info['seconds']:.1f} s")
    used = Counter(describe_channels(n, s) for n, s in zip(emb.meta["channel_names"], emb.meta["channel_slots"]))
    print("channels used (name@slot):")
    for combo, n in used.most_common():
        print(f"  {n:6d} image(s): {combo}")
    if emb.info.get("pool_fallback"):
        print(f"note: {emb.info['note']} {emb.info['pool_fallback']}")
    return 0
