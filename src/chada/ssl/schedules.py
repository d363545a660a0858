"""Step-indexed schedules of DINO training (Caron et al. 2021): pure functions of the global step.

Every schedule is a function of the integer step only, so a resumed run recomputes exactly the
values of an uninterrupted one and no scheduler state has to be checkpointed.

- learning rate: linear warm-up from ``warmup_start`` to ``base`` over ``warmup_steps``, then a
  half-cosine from ``base`` down to ``final`` at ``total_steps``;
- weight decay: cosine ``0.04 -> 0.4`` (no warm-up);
- teacher momentum: cosine ``0.996 -> 1``;
- teacher temperature: linear ``0.04 -> 0.07`` over the warm-up epochs, then constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["cosine_value", "CosineSchedule", "LinearWarmupConstant"]


def cosine_value(
    step: int,
    total_steps: int,
    base: float,
    final: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> float:
    """Value at ``step`` of a linear warm-up followed by a cosine decay from ``base`` to ``final``.

    Steps at or beyond ``total_steps`` return ``final``. With ``warmup_steps = 0`` the first step
    returns ``base`` exactly (as DINO's ``cosine_scheduler``).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup_steps = min(warmup_steps, total_steps)
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
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

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")

    def __call__(self, step: int) -> float:
        return cosine_value(step, self.total_steps, self.base, self.final, self.warmup_steps, self.warmup_start)


@dataclass(frozen=True)
class LinearWarmupConstant:
    """Linear ramp from ``start`` to ``end`` over ``warmup_steps``, then ``end`` (teacher temperature)."""

    start: float
    end: float
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.warmup_steps <= 0 or step >= self.warmup_steps:
            return self.end
        return self.start + (self.end - self.start) * step / self.warmup_steps
