"""The paper recipe rehearsed at small size (benchmarks/rehearsal.py --scale test): the unchanged
configs/idrcell100k_moyen.yaml with size overrides, a corpus of 224-px 1-7 channel images in shards,
torchrun with 2 processes (gloo), bf16, compile off and on, SIGKILL mid-epoch and resume to a
bit-identical teacher, then chada embed and chada evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPT = REPO / "benchmarks" / "rehearsal.py"


@pytest.mark.slow  # ~2 min on 2 cores: 6 torchrun launches, and inductor compiling afresh in the 3 compiled ones
def test_paper_recipe_rehearsal(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--scale", "test", "--compile", "both"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    report_path = tmp_path / "rehearsal.json"
    assert report_path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    for tag in ("compile_off", "compile_on"):
        r = report["runs"][tag]
        k = r["killed"]
        assert not k["finished_before_kill"] and k["mid_epoch"] and k["mid_shard"], k
        assert 0 < k["checkpoint_step"] < report["total_steps"]
        assert r["teacher_bit_identical"] and r["student_bit_identical"], tag
        assert r["tensorboard"], tag
    assert "results.json" in report["evaluation"]["evaluate_files"]
    assert report["ok"] and proc.returncode == 0
