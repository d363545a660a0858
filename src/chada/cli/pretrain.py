"""``chada pretrain``: DINO self-supervised pretraining from a YAML config.

chada pretrain --config configs/quickstart.yaml data.manifest=data/synth/manifest.csv optim.epochs=10
chada pretrain --config configs/quickstart.yaml --resume            # continue after an interruption
chada pretrain --config c.yaml --resume optim.epochs=200 --resume-allow-changes optim.epochs
torchrun --nproc_per_node=8 --no-python chada pretrain --config configs/idrcell100k_moyen.yaml
"""

from __future__ import annotations

import argparse
import os
import sys

from chada.cli.options import add_debug

__all__ = ["register", "handler"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="DINO self-supervised pretraining (CPU, or multi-GPU under torchrun)",
        description=(
            "Pretrain a registered backbone with DINO. Settings come from --config (YAML) and then from "
            "section.key=value overrides, e.g. optim.lr=1e-3 run.output_dir=runs/x model.name=chada_vit_petit."
        ),
    )
    p.add_argument("--config", "-c", default=None, help="YAML config (default: built-in DINO defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.epochs=5")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    p.add_argument(
        "--resume-allow-changes",
        action="append",
        default=[],
        metavar="KEY[,KEY...]",
        help="with --resume: config keys (e.g. optim.epochs, or world_size) that may differ from the "
        "checkpoint's although they change the result; other differences are refused",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_debug(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    import yaml

    from chada.ssl.config import config_to_dict, load_config

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    from chada.io import check_writable_dir
    from chada.locks import hold_output

    check_writable_dir(cfg.run.output_dir, what="run.output_dir")  # before any data is read
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 takes the folder for all ranks
        hold_output(cfg.run.output_dir, folder=True)
    from chada.ssl.distributed import cleanup
    from chada.ssl.trainer import CompileError, Trainer

    allow = [k.strip() for item in args.resume_allow_changes for k in item.split(",") if k.strip()]
    if allow and not args.resume:
        raise ValueError("--resume-allow-changes only applies with --resume")
    trainer = Trainer(cfg, resume=args.resume, allow_changes=allow)
    # No process-group teardown on an error: exiting is what lets torchrun stop the other workers.
    try:
        out = trainer.fit()
    except CompileError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if trainer.dist.is_main:
        done = trainer.global_step >= trainer.total_steps
        where = out / "teacher" if done else out / "checkpoint.pt"
        state = "finished" if done else f"stopped at step {trainer.global_step}/{trainer.total_steps}"
        print(f"pretraining {state}: {where}")
    cleanup()
    return 0
