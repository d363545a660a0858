"""Schedules: warm-up, cosine end points, monotonicity, bad input."""

import math

import pytest

from chada.ssl.schedules import CosineSchedule, LinearWarmupConstant, cosine_value


def test_cosine_warmup_then_decay() -> None:
    s = CosineSchedule(base=1.0, final=0.1, total_steps=100, warmup_steps=10, warmup_start=0.0)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    # half-way through the cosine part: mean of base and final
    assert s(55) == pytest.approx(0.55)
    assert s(100) == pytest.approx(0.1)
    assert s(1000) == pytest.approx(0.1)
    values = [s(i) for i in range(10, 101)]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))


def test_cosine_without_warmup_matches_dino_formula() -> None:
    # DINO's cosine_scheduler: final + 0.5 (base - final)(1 + cos(pi i / n))
    for i in (0, 7, 33, 99):
        expect = 1.0 + 0.5 * (0.996 - 1.0) * (1 + math.cos(math.pi * i / 100))
        assert cosine_value(i, 100, 0.996, 1.0) == pytest.approx(expect)


def test_teacher_temperature_warmup() -> None:
    t = LinearWarmupConstant(0.04, 0.07, warmup_steps=30)
    assert t(0) == pytest.approx(0.04)
    assert t(15) == pytest.approx(0.055)
    assert t(30) == pytest.approx(0.07)
    assert t(500) == pytest.approx(0.07)
    assert LinearWarmupConstant(0.04, 0.07, 0)(0) == pytest.approx(0.07)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        CosineSchedule(1.0, 0.0, total_steps=0)
    with pytest.raises(ValueError):
        cosine_value(-1, 10, 1.0, 0.0)
    with pytest.raises(ValueError):
        cosine_value(0, 10, 1.0, 0.0, warmup_steps=-2)
