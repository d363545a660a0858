"""``chada import DATASET SOURCE OUT``: alias of ``chada data import`` (see docs/datasets.md)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from chada.data.importers.cli import add_import_arguments

    p = subparsers.add_parser(
        "import",
        help="import a benchmark dataset in its published layout (alias of `chada data import`)",
        description="Import BloodMNIST, CYCLoPs, BBBC048, BBBC021, NF-kB, Bray or CHAMMI into a manifest.",
    )
    add_import_arguments(p)
