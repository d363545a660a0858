"""The ``chada`` console script: one sub-command module per job, each with ``register(subparsers)``.

Every sub-command module imports its heavy dependencies inside its handler so that ``chada --help``
stays fast. Failures follow :mod:`chada.errors`: one or two lines on stderr, exit code 2 for bad
input, 1 for anything else, 130 when interrupted; ``chada --debug ...`` or ``CHADA_DEBUG=1`` shows
the traceback. Warnings print as one line each.
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
    "segment",
    "project",
    "convert",
    "features",
    "profile",
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
    # Its own dest: a sub-command's ``--debug`` default would overwrite a shared one.
    parser.add_argument(
        "--debug",
        dest="global_debug",
        action="store_true",
        help="show the full traceback of a failure (also: environment variable CHADA_DEBUG=1)",
    )
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


def _command_name(args: argparse.Namespace) -> str:
    """``"embed"``, or ``"data check"`` for a command with sub-commands."""
    parts = [str(args.command)]
    for key in (f"{args.command}_command", str(args.command)):  # dests of data's / benchmark's sub-parsers
        value = getattr(args, key, None)
        if isinstance(value, str):
            parts.append(value)
            break
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from chada import locks
    from chada.errors import debug_requested, one_line_warnings, report

    parser = build_parser()
    args = parser.parse_args(argv)
    command = _command_name(args)
    locks.COMMAND_LINE = " ".join(["chada", *(sys.argv[1:] if argv is None else argv)])
    debug = debug_requested(getattr(args, "global_debug", False) or getattr(args, "debug", False))
    with one_line_warnings(command):
        try:
            rc = args.func(args)
        except KeyboardInterrupt:
            print(
                "\ninterrupted; finished stages and checkpoints are kept, re-run to resume", file=sys.stderr
            )
            return 130
        except Exception as exc:  # noqa: BLE001 - the CLI's one error policy (chada.errors)
            if debug:
                raise
            config = getattr(args, "config", None)
            return report(exc, command, source=config if isinstance(config, str) else None)
        finally:
            locks.release_held()  # the outputs this command took (chada.locks): the next run may have them
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
