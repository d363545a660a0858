"""``chada convert CKPT OUT_DIR [--student|--teacher]``: the authors' released weights -> a model folder.

The folder (``config.json`` + ``model.safetensors``) is accepted by ``chada embed --model OUT_DIR`` and
every other command that takes a model.
"""

from __future__ import annotations

import argparse

from chada.cli.options import add_debug, at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert the authors' ChAda-ViT checkpoint (Lightning .ckpt or state dict) to a model folder",
        description=(
            "Read the authors' checkpoint, map every backbone tensor onto the official-architecture "
            "variant with STRICT checking (any missing or unexpected key is an error naming it), and write "
            "config.json + model.safetensors. The file is read without executing its pickled code."
        ),
    )
    p.add_argument("ckpt", help="checkpoint: .ckpt / .pt / .pth (torch) or .safetensors")
    p.add_argument("out_dir", help="output folder for the converted model")
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--student",
        dest="which",
        action="store_const",
        const="student",
        help="the DINO student, prefix 'backbone.' (default: what the authors' evaluation code loads)",
    )
    who.add_argument(
        "--teacher",
        dest="which",
        action="store_const",
        const="teacher",
        help="the DINO teacher, prefix 'momentum_backbone.'",
    )
    p.set_defaults(which="student")
    p.add_argument(
        "--model",
        default=None,
        help="registered architecture to fill (default: chada_vit_moyen_official)",
    )
    p.add_argument(
        "--num-heads",
        type=at_least(1),
        default=None,
        help="attention heads; not stored in the weights (default: the model's, 12, as the authors' factory "
        "when the weights were trained, their hub config and notebook; 2 is the later factory's value). "
        "See docs/official-weights.md",
    )
    p.add_argument(
        "--final-norm-eps",
        type=float,
        default=None,
        help="eps of the final LayerNorm (default: the model's, 1e-6 as in the authors' training "
        "factory; their notebook's direct constructor uses 1e-5)",
    )
    p.add_argument("--force", action="store_true", help="overwrite OUT_DIR if it already holds a model")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from chada.io import check_writable_dir
    from chada.locks import hold_output
    from chada.models.convert import OFFICIAL_MODEL_NAME, ConversionReport, load_official_checkpoint
    from chada.models.hub import CONFIG_NAME, WEIGHTS_NAME

    out = check_writable_dir(args.out_dir, what="OUT_DIR")  # before the checkpoint is read
    hold_output(out, folder=True)
    if (out / WEIGHTS_NAME).exists() and not args.force:
        raise ValueError(f"{out} already holds {WEIGHTS_NAME}; pass --force to overwrite")
    overrides = {}
    if args.num_heads is not None:
        overrides["num_heads"] = args.num_heads
    if args.final_norm_eps is not None:
        overrides["norm_eps"] = args.final_norm_eps
    report = ConversionReport()
    model_name = args.model or OFFICIAL_MODEL_NAME
    model = load_official_checkpoint(
        args.ckpt, which=args.which, model_name=model_name, report=report, **overrides
    )
    extra = {
        "converted_from": str(Path(args.ckpt).name),
        "which": report["which"],
        "source_prefix": report["prefix"],
        "overrides": report["overrides"],
    }
    model.save_pretrained(out, extra=extra)

    if not args.quiet:
        print(f"read {args.ckpt}: {args.which} backbone under prefix {report['prefix']!r}")
        for official, ours in report["mapped"].items():
            print(f"  {official:45s} -> {ours}")
        if report["ignored"]:
            ignored = ", ".join(f"{k}.* ({n})" for k, n in sorted(report["ignored"].items()))
            print(f"ignored (not this backbone): {ignored}")
    cfg = model.config
    print(
        f"converted {len(report['mapped'])} tensors ({model.num_params():,} parameters) into {model_name} "
        f"[heads={cfg.num_heads}, final norm eps={cfg.norm_eps:g}, pos interpolation={cfg.pos_interpolation}] "
        f"-> {out / CONFIG_NAME}, {out / WEIGHTS_NAME}"
    )
    return 0
