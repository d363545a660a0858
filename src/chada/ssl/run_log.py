"""The run log of DINO pretraining: ``log.csv`` (one row per logged step), and TensorBoard if asked.

A resumed run keeps the rows up to its checkpoint's step and replaces the interrupted tail, so the
CSV of a resumed run equals the uninterrupted run's (but for the timing columns).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from chada.io import atomic_write_bytes

__all__ = ["LOG_NAME", "LOG_FIELDS", "RunLog", "LossWatch", "collapse_message"]

LOG_NAME = "log.csv"
LOG_FIELDS = [
    "step", "epoch", "loss", "lr", "wd", "teacher_temp", "momentum", "img_per_s",
    "teacher_entropy", "teacher_batch_entropy", "kl", "collapse", "elapsed_s",
]  # fmt: skip


class RunLog:
    """``log.csv`` in ``out_dir``, opened for appending after the rows up to ``global_step``.

    Written by rank 0 only. ``tensorboard``: also write ``out_dir/tensorboard`` (when installed).
    """

    def __init__(self, out_dir: Path, global_step: int, tensorboard: bool) -> None:
        self.path = out_dir / LOG_NAME
        rows: list[dict[str, str]] = []
        if self.path.exists() and global_step > 0:
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= global_step]
        # Rows after the checkpoint belong to the interrupted tail and are replaced by the resumed run.
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(self.path, text.getvalue().encode())
        self._csv = open(self.path, "a", newline="")  # noqa: SIM115 - kept open for the whole run
        self._writer = csv.DictWriter(self._csv, fieldnames=LOG_FIELDS)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=global_step + 1)
            except ImportError:
                warnings.warn("tensorboard is not installed: logging to CSV only", stacklevel=2)

    def write(self, row: dict[str, Any]) -> None:
        """One CSV row (missing fields empty); the finite numbers also go to TensorBoard as ``train/<key>``."""
        self._writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})
        self._csv.flush()
        if self._tb is not None:
            for k, v in row.items():
                if (
                    k not in ("step", "epoch", "collapse")
                    and isinstance(v, (int, float))
                    and math.isfinite(v)
                ):
                    self._tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        self._csv.close()
        if self._tb is not None:
            self._tb.close()


class LossWatch:
    """The first step with a non-finite loss, and that loss, kept on the device: :meth:`record` never
    waits for the device; :meth:`check` (one host sync) raises FloatingPointError naming the step."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)  # -1: none yet
        self.loss = torch.zeros((), device=device)

    @torch.no_grad()
    def record(self, loss: torch.Tensor, step: int) -> None:
        first_bad = (self.step < 0) & ~torch.isfinite(loss)
        self.step = torch.where(first_bad, step, self.step)
        self.loss = torch.where(first_bad, loss.detach().float(), self.loss)

    def check(self) -> None:
        bad = int(self.step)
        if bad >= 0:
            raise FloatingPointError(f"loss is {float(self.loss)} at step {bad}: stopping (lower optim.lr?)")


def collapse_message(step: int, kind: str, stats: dict[str, Any]) -> str:
    """The warning for a collapsed teacher (``kind`` from :func:`chada.ssl.dino.collapse_kind`)."""
    return (
        f"step {step}: the teacher looks collapsed ({kind}): entropy {stats['teacher_entropy']:.3f} / "
        f"{stats['max_entropy']:.3f} nats, batch entropy {stats['teacher_batch_entropy']:.3f}, KL {stats['kl']:.2e}"
    )
