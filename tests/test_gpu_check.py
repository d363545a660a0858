"""benchmarks/gpu_check.py: the dry run (CPU, test model, gloo) passes every section, and without
CUDA the real run is a one-line no-op."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.mark.slow  # ~25 s on 2 cores: two torchrun launches of 2 processes each
def test_dry_run_passes_every_section(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = result["rows"]
    by_section = {s: [r for r in rows if r["section"] == s] for s in ("parity", "grid", "ddp")}
    # parity: packed and varlen against padded, fp32 and bf16, every layer
    assert len(by_section["parity"]) == 4 and all(r["status"] == "PASS" for r in by_section["parity"]), by_section["parity"]
    assert all(max(r["layer_max_abs_diff"]) < 1e-4 for r in by_section["parity"])
    # grid: 2 modes x 3 mixes x 2 dtypes x 3 attentions, all measured (compile rows are real-run only)
    assert len(by_section["grid"]) == 36 and all(r["status"] == "ok" and r["images_per_s"] > 0 for r in by_section["grid"])
    # ddp: shards, 2 gloo processes to step 2, then --resume to step 4
    statuses = [r["status"] for r in by_section["ddp"]]
    assert statuses == ["ok", "PASS", "PASS"], by_section["ddp"]
    assert "--resume" in by_section["ddp"][2]["config"] and "1..4" in by_section["ddp"][2]["config"]
    # one markdown table on stdout
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| section | config | status") and len(table) == 2 + len(rows)
    assert not list(tmp_path.glob("work.*")), "the work folder is removed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_without_cuda_it_says_so_and_exits_0(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.strip().startswith("gpu_check: no CUDA device") and len(proc.stdout.strip().splitlines()) == 1
    assert not (tmp_path / "gpu_check.json").exists()
