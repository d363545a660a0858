"""The training loop does not wait for the device at every step, and still stops a diverged run.

Host syncs are counted as calls of the tensor methods that read a value back to Python (``item``,
``bool``, ``float``, ``int``, ``tolist``, ``cpu``, ``numpy``) made by the trainer's own code in a step
that neither logs nor saves; the model forwards and the optimizer (another layer's code; AdamW keeps
its step counter on the CPU) are left out of the count.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from chada.ssl.config import load_config
from chada.ssl.trainer import CHECKPOINT_NAME, LOG_NAME, Trainer
from tests.helpers.dino import tiny_overrides

READS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")


class SyncCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.active = False
        self.calls: list[str] = []
        for name in READS:
            real = getattr(torch.Tensor, name)

            def counted(t: torch.Tensor, *a: Any, _real=real, _name=name, **k: Any) -> Any:
                if self.active:
                    self.calls.append(_name)
                return _real(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def paused(self, fn: Any) -> Any:
        def run(*a: Any, **k: Any) -> Any:
            was, self.active = self.active, False
            try:
                return fn(*a, **k)
            finally:
                self.active = was

        return run


def test_a_step_that_neither_logs_nor_saves_has_no_host_sync(
    manifest: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    cfg = load_config(
        None, tiny_overrides(manifest, tmp_path / "run") + ["run.log_every_steps=100", "optim.epochs=1"]
    )
    t = Trainer(cfg)
    counter = SyncCounter(monkeypatch)
    t.student_fwd, t.teacher_fwd = counter.paused(t.student_fwd), counter.paused(t.teacher_fwd)
    t.optimizer.step = counter.paused(t.optimizer.step)
    per_step: list[list[str]] = []
    real_step = Trainer.train_step

    def step(self: Trainer, views: list[Any], want_stats: bool) -> dict[str, Any]:
        counter.active, counter.calls = True, []
        try:
            return real_step(self, views, want_stats)
        finally:
            counter.active = False
            per_step.append(counter.calls)

    monkeypatch.setattr(Trainer, "train_step", step)
    t.fit()
    assert len(per_step) == 3
    assert per_step[:2] == [[]] * 2, per_step  # steps 1-2 neither log nor save
    with open(tmp_path / "run" / LOG_NAME) as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["3"]  # the last step logs (and syncs) anyway


def test_a_non_finite_loss_stops_before_the_next_log_or_checkpoint(
    manifest: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """The loss turns NaN at step 1 (0-based); logs and saves only at the last step (3): the run stops
    there, names step 1, and writes neither a log row nor a checkpoint nor teacher/."""
    run = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(manifest, run) + ["run.log_every_steps=100", "optim.epochs=1"])
    t = Trainer(cfg)
    real = t.loss_fn.forward

    def loss(*args: Any, **kwargs: Any) -> torch.Tensor:
        value = real(*args, **kwargs)
        return value * float("nan") if t.global_step == 1 else value

    t.loss_fn.forward = loss
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 1"):
        t.fit()
    assert t.global_step == 3
    assert not (run / CHECKPOINT_NAME).exists() and not (run / "teacher").exists()
    with open(run / LOG_NAME) as fh:
        assert list(csv.DictReader(fh)) == []
