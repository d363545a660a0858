"""The ``chada`` console script: one sub-command module per job, each with ``register(subparsers)``.

Every sub-command module imports its heavy dependencies inside its handler so that ``chada --help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown by ``chada --help``.
SUBCOMMAND_MODULES = [
    "quickstart",
    "info",
    "embed",
    "data",
    "pretrain",
    "evaluate",
    "attention",
    "project",
    "convert",
    "features",
    "import_",
    "subsets",
    "benchmark",
]


def build_parser() -> argparse.ArgumentParser:
    from chada import __version__

    parser = argparse.ArgumentParser(
        prog="chada",
        description="ChAda-ViT: channel-adaptive vision transformer for heterogeneous microscopy images.",
    )
    parser.add_argument("--version", action="version", version=f"chada {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"chada.cli.{name}")
        except ModuleNotFoundError as exc:  # a sub-command still being written
            if exc.name == f"chada.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted; finished stages and checkpoints are kept, re-run to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, TypeError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"chada {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
