"""DINO in the tests: the overrides of the tiny pretraining runs, and DINO's published schedule formulas
(Caron et al. 2021, ``utils.cosine_scheduler`` and the teacher-temperature array of ``DINOLoss``)
written out with numpy, the reference the schedule and recipe tests compare with."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_dino(manifest: Path, out: Path, *changes: str) -> list[str]:
    """Overrides of the smallest DINO run: chada_vit_test at 16 px, a 16/16/8 head, 1 epoch of batch
    4 without warm-up, 2 global 16-px crops + 1 local 8-px crop, on the CPU with one thread, no progress
    bar, no TensorBoard. ``changes`` come last, and a later override of a key wins."""
    return [
        "model.name=chada_vit_test", "model.overrides.img_size=16",
        "head.out_dim=16", "head.hidden_dim=16", "head.bottleneck_dim=8",
        "optim.epochs=1", "optim.warmup_epochs=0", "dino.warmup_teacher_temp_epochs=0", "optim.batch_size_per_gpu=4",
        "augment.global_size=16", "augment.local_size=8", "augment.n_local=1",
        f"data.manifest={manifest}", "data.num_workers=0",
        "run.device=cpu", "run.threads=1", "run.progress=false", "run.tensorboard=false", f"run.output_dir={out}",
        *changes,
    ]  # fmt: skip


# The trainer tests' run on the 24-image ``manifest`` fixture (tests/ssl/conftest.py): batch 8 = 3 steps
# an epoch, 2 epochs with a 1-epoch warm-up (so the LR starts at 0 and the logs show the ramp), a head
# big enough that the DINO loss moves, 2 local crops, a log row every step and no mid-run checkpoint.
TRAINER_RUN = (
    "head.out_dim=64", "head.hidden_dim=32", "head.bottleneck_dim=16",
    "optim.epochs=2", "optim.batch_size_per_gpu=8", "optim.lr=0.05",
    "optim.warmup_epochs=1", "dino.warmup_teacher_temp_epochs=1", "augment.n_local=2",
    "run.log_every_steps=1", "run.save_every_steps=100",
)  # fmt: skip


def tiny_overrides(manifest: Path, out: Path) -> list[str]:
    """The trainer tests' run (``TRAINER_RUN`` on top of ``tiny_dino``)."""
    return tiny_dino(manifest, out, *TRAINER_RUN)


def dino_cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0.0):
    """DINO's utils.cosine_scheduler, as published."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def dino_teacher_temp(warmup_temp, temp, warmup_epochs, nepochs):
    """DINO's DINOLoss.teacher_temp_schedule (one value per epoch)."""
    return np.concatenate(
        (np.linspace(warmup_temp, temp, warmup_epochs), np.ones(nepochs - warmup_epochs) * temp)
    )
