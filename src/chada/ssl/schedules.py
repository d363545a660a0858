"""Step-indexed schedules of DINO training (Caron et al. 2021): pure functions of the global step.

Every schedule is a function of the integer step (or of the epoch, itself ``step // steps_per_epoch``),
so a resumed run recomputes exactly the values of an uninterrupted one and no scheduler state has
to be checkpointed. The defaults are DINO's ``utils.cosine_scheduler`` and teacher-temperature array:

- learning rate: warm-up ``np.linspace(warmup_start, base, warmup_steps)`` (the base LR is reached
  AT the last warm-up step), then a half-cosine from ``base`` down to ``final`` at ``total_steps``;
- weight decay: cosine ``0.04 -> 0.4`` (no warm-up);
- teacher momentum: cosine ``0.996 -> 1``;
- teacher temperature: one value per EPOCH, ``np.linspace(0.04, 0.07, warmup_epochs)``, then constant.

``warmup="ramp"`` keeps the earlier form ``start + (base - start) * step / warmup_steps``, which ends
one step short of ``base``; it exists only so that runs measured with it (the CPU quickstart) stay
reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["WARMUP_FORMS", "cosine_value", "warmup_value", "CosineSchedule", "LinearWarmupConstant"]

WARMUP_FORMS = ("linspace", "ramp")


def warmup_value(index: int, n: int, start: float, end: float, form: str = "linspace") -> float:
    """Value ``index`` (``0 <= index < n``) of a linear warm-up of ``n`` values from ``start`` to ``end``.

    ``"linspace"``: ``np.linspace(start, end, n)[index]`` (``end`` at ``index = n - 1``; a single
    value is ``start``, as numpy gives). ``"ramp"``: ``start + (end - start) * index / n``.
    """
    if form not in WARMUP_FORMS:
        raise ValueError(f"warm-up form must be one of {WARMUP_FORMS}, got {form!r}")
    if form == "ramp":
        return start + (end - start) * index / n
    if n == 1:
        return start
    return start + (end - start) * index / (n - 1)


def cosine_value(
    step: int,
    total_steps: int,
    base: float,
    final: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
    warmup: str = "linspace",
) -> float:
    """Value at ``step`` of a linear warm-up followed by a cosine decay from ``base`` to ``final``.

    Equal to DINO's ``cosine_scheduler(...)[step]``; steps at or beyond ``total_steps`` return
    ``final``. With ``warmup_steps = 0`` the first step returns ``base`` exactly.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup_steps = min(warmup_steps, total_steps)
    if step < warmup_steps:
        return warmup_value(step, warmup_steps, warmup_start, base, warmup)
    if step >= total_steps:
        return final
    span = total_steps - warmup_steps
    progress = (step - warmup_steps) / span
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class CosineSchedule:
    """``schedule(step)`` = :func:`cosine_value` with fixed parameters."""

    base: float
    final: float
    total_steps: int
    warmup_steps: int = 0
    warmup_start: float = 0.0
    warmup: str = "linspace"

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")
        if self.warmup not in WARMUP_FORMS:
            raise ValueError(f"warmup must be one of {WARMUP_FORMS}, got {self.warmup!r}")

    def __call__(self, step: int) -> float:
        return cosine_value(
            step, self.total_steps, self.base, self.final, self.warmup_steps, self.warmup_start, self.warmup
        )


@dataclass(frozen=True)
class LinearWarmupConstant:
    """Linear warm-up from ``start`` to ``end`` over ``warmup`` indices, then ``end``.

    The index is the epoch for DINO's teacher temperature (``form="linspace"``: ``end`` is reached at
    index ``warmup - 1``), or the step with ``form="ramp"`` (``end`` at index ``warmup``).
    """

    start: float
    end: float
    warmup: int
    form: str = "linspace"

    def __post_init__(self) -> None:
        if self.form not in WARMUP_FORMS:
            raise ValueError(f"form must be one of {WARMUP_FORMS}, got {self.form!r}")

    def __call__(self, index: int) -> float:
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        if self.warmup <= 0 or index >= self.warmup:
            return self.end
        return warmup_value(index, self.warmup, self.start, self.end, self.form)
