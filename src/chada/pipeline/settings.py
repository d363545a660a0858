"""What the quickstart runs: its encoders, tasks and settings, and the stage markers that make it resumable."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chada.io import atomic_write_bytes

__all__ = ["ENCODERS", "RECONSTRUCTION_TASK", "TASKS", "QuickstartSettings", "Stages"]

RECONSTRUCTION_TASK = "synth_actin_reconstruction"

# name -> (registered architecture size, DINO pool)
ENCODERS: dict[str, str] = {
    "chada_vit": "chada_vit_test",
    "one_channel_vit": "one_channel_vit_test",
    "inter_channel_vit": "inter_channel_vit_test",
}

# task name -> (embedding group, label column, kind, what it tests)
TASKS: dict[str, tuple[str, str, str, str]] = {
    "synth_interchannel": (
        "synth_markers_eval", "interchannel_label", "classification",
        "synthetic (held-out seed): MarkerB on the same side of the cell as MarkerA or the opposite one; "
        "invisible to any single channel",
    ),
    "synth_size": ("synth_all", "label", "classification", "synthetic: cell size class (visible in any channel)"),
    "synth_radius": ("synth_all", "target", "regression", "synthetic: cell radius in pixels (regression)"),
    "real_nuclei_size": (
        "real_nuclei", "label", "classification",
        "real DSB2018 nuclei crops (1 channel): nucleus-area tercile (a weak, honest label)",
    ),
    "real_ihc_dab": (
        "real_ihc", "label", "classification",
        "real IHC tiles (haematoxylin/eosin/DAB): DAB-high vs DAB-low (depends on one channel)",
    ),
}  # fmt: skip


@dataclass
class QuickstartSettings:
    out: Path
    fast: bool = False
    n_per_assay: int = 160
    synth_size: int = 64
    embed_size: int = 32
    epochs: int = 180
    marker_pattern: str = "domain"  # see chada.data.synth: the inter-channel label a tiny model can learn
    eval_n_per_assay: int = 600  # held-out marker images (another seed) for the inter-channel task
    jobs: int | None = None  # encoders pretrained at once, 1 thread each (default: all 3 if >1 core)
    baseline_epochs: int | None = None  # same budget as ChAda-ViT unless set
    seeds: int = 5
    pretrain_seeds: int = 1  # DINO runs per encoder (seeds 0..N-1); each adds a full pretraining
    threads: int | None = None
    umap: bool = True
    steps_cap: int | None = None
    # The embedding stage's forward pass (auto / fp32 / bf16); fp32 by default: the README's numbers were
    # measured in fp32, and the report compares against them.
    precision: str = "fp32"
    timings: dict[str, float] = field(default_factory=dict)

    def epochs_of(self, encoder: str) -> int:
        """DINO epochs of one encoder (or run): ``epochs``, or ``baseline_epochs`` for the baselines."""
        encoder = self.runs().get(encoder, (encoder, 0))[0]
        return self.epochs if encoder == "chada_vit" or self.baseline_epochs is None else self.baseline_epochs

    def runs(self) -> dict[str, tuple[str, int]]:
        """DINO runs ``name -> (encoder, seed)``: ``chada_vit`` (seed 0), ``chada_vit_s1``, ...; the
        seed-0 run keeps the encoder's name, so one seed gives the same names and folders as before."""
        return {
            (enc if seed == 0 else f"{enc}_s{seed}"): (enc, seed)
            for seed in range(max(1, int(self.pretrain_seeds)))
            for enc in ENCODERS
        }

    @classmethod
    def make(cls, out: str | os.PathLike, fast: bool = False, **kw: Any) -> QuickstartSettings:
        if fast:
            base = dict(n_per_assay=24, synth_size=32, epochs=1, seeds=2, umap=False, eval_n_per_assay=24)
        else:
            base = {}
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(out=Path(out), fast=fast, **base)


class Stages:
    """Done-markers under ``OUT/stages``: a stage that finished is not run again."""

    def __init__(self, out: Path, log: Callable[[str], None]) -> None:
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.reused: list[str] = []  # stages this invocation found done (a resumed run's total is partial)

    def done(self, name: str) -> dict[str, Any] | None:
        p = self.dir / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def run(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        prev = self.done(name)
        if prev is not None:
            self.log(f"[{name}] already done ({prev.get('seconds', 0):.0f} s), reusing it")
            self.reused.append(name)
            return prev
        self.log(f"[{name}] running")
        t0 = time.perf_counter()
        result = fn() or {}
        result.setdefault("seconds", time.perf_counter() - t0)  # a stage run elsewhere reports its own
        atomic_write_bytes(self.dir / f"{name}.json", json.dumps(result, indent=2, default=str).encode())
        self.log(f"[{name}] done in {result['seconds']:.0f} s")
        return result
