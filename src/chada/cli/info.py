"""``chada info``: registered models, their sizes, and token counts."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="list registered models with parameter and token counts")
    p.add_argument("--model", nargs="*", help="only these model names")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import chada
    from chada.models.registry import model_spec

    names = args.model or chada.list_models()
    table = Table(title="chada models")
    for col in (
        "name",
        "arch",
        "params",
        "D",
        "depth",
        "heads",
        "patch",
        "img",
        "C_max",
        "tokens C=1",
        "tokens C_max",
        "about",
    ):
        table.add_column(col, justify="right" if col not in ("name", "arch", "about") else "left")
    for name in names:
        arch, _, desc = model_spec(name)
        model = chada.create_model(name)
        cfg = model.config
        n = sum(p.numel() for p in model.parameters())
        cmax = getattr(cfg, "max_channels", None)
        tokens = getattr(cfg, "tokens", None)
        t1 = str(tokens(1)) if tokens else "-"
        tmax = str(tokens(cmax)) if tokens and cmax else "-"
        table.add_row(
            name,
            arch,
            f"{n:,}",
            str(getattr(cfg, "embed_dim", "-")),
            str(getattr(cfg, "depth", "-")),
            str(getattr(cfg, "num_heads", "-")),
            str(getattr(cfg, "patch_size", "-")),
            f"{getattr(cfg, 'img_size', '-')}",
            str(cmax if cmax is not None else "-"),
            t1,
            tmax,
            desc,
        )
    Console(width=200).print(table)
    return 0
