"""benchmarks/gpu_check.py: the dry run (CPU, test model, gloo) passes every section, and without
CUDA the real run is a one-line no-op."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.mark.slow  # ~2-3 min on 2 cores: seven torchrun/chada launches
def test_dry_run_passes_every_section(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--budget", "1200"],
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = result["rows"]
    assert result["sections_done"] == ["parity", "ddp", "embed", "train", "compile", "grid"]
    by_section = {s: [r for r in rows if r["section"] == s] for s in result["sections_done"]}
    # parity: packed and varlen against padded, fp32 and bf16, every layer
    assert len(by_section["parity"]) == 4 and all(r["status"] == "PASS" for r in by_section["parity"]), (
        by_section["parity"]
    )
    assert all(max(r["layer_rel_diff"]) < 1e-4 for r in by_section["parity"])
    # ddp: shards; 2 gloo processes uninterrupted, interrupted at 2, resumed to 4; teachers bit-exact;
    # the half-way checkpoint resumed by 1 process
    ddp = by_section["ddp"]
    assert [r["status"] for r in ddp] == ["ok"] + ["PASS"] * 5, ddp
    assert "uninterrupted: steps 1..4" in ddp[1]["config"] and "teacher exported" in ddp[1]["detail"]
    assert "interrupted: steps 1..2" in ddp[2]["config"] and "--resume: steps 1..4" in ddp[3]["config"]
    assert ddp[4]["teacher_rel_diff"] == 0.0
    assert "resume with 1 process" in ddp[5]["config"] and "1..3" in ddp[5]["config"]
    # embed of the exported teacher; varlen + drop path run; compile rows through compile_blocks
    assert [r["status"] for r in by_section["embed"]] == ["PASS"]
    assert [r["status"] for r in by_section["train"]] == ["PASS"], by_section["train"]
    assert len(by_section["compile"]) == 4 and all(r["status"] == "ok" for r in by_section["compile"]), (
        by_section["compile"]
    )
    assert all("graphs_added_by_other_mix" in r for r in by_section["compile"])
    # grid: 2 modes x 3 mixes x 2 dtypes x 3 attentions, all measured
    assert len(by_section["grid"]) == 36 and all(
        r["status"] == "ok" and r["images_per_s"] > 0 for r in by_section["grid"]
    )
    # one markdown table on stdout; every row was also printed as it came
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| section | config | status") and len(table) == 2 + len(rows)
    assert sum(line.startswith("| ") for line in proc.stderr.splitlines()) == len(rows)
    assert not list(tmp_path.glob("work.*")), "the work folder is removed"


def test_a_run_killed_half_way_leaves_the_finished_sections(tmp_path: Path) -> None:
    """SIGKILL (as the OOM killer or a time limit would) after the first section: the JSON on disk
    holds that section's rows and says it finished."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--sections", "parity,grid", "--budget", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    path = tmp_path / "gpu_check.json"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if path.exists() and json.loads(path.read_text())["sections_done"] == ["parity"]:
                break
            assert proc.poll() is None, "gpu_check ended before it could be killed"
            time.sleep(0.05)
        proc.kill()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    result = json.loads(path.read_text())
    assert result["sections_done"] == ["parity"]
    parity = [r for r in result["rows"] if r["section"] == "parity"]
    assert len(parity) == 4 and all(r["status"] == "PASS" for r in parity)
    assert "grid" not in result["sections_done"] and len(result["rows"]) < 4 + 36


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_without_cuda_it_says_so_and_exits_0(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert (
        proc.stdout.strip().startswith("gpu_check: no CUDA device")
        and len(proc.stdout.strip().splitlines()) == 1
    )
    assert not (tmp_path / "gpu_check.json").exists()
