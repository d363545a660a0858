"""``chada --help`` parses arguments without importing torch (about 4 s of a 5 s ``--help`` before)."""

from __future__ import annotations

import subprocess
import sys


def test_build_parser_does_not_import_torch():
    code = (
        "import sys\n"
        "from chada.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = sorted(m for m in ('torch', 'matplotlib', 'sklearn', 'scipy', 'pandas') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"argument parsing imported {out.strip()}"


def test_the_models_api_still_loads_on_first_use():
    code = "import sys, chada\nassert 'torch' not in sys.modules\nm = chada.create_model('chada_vit_test')\nprint(type(m).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ChAdaViT"
