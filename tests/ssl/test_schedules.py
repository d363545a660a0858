"""Schedules against DINO's reference formulas (Caron et al. 2021, ``utils.cosine_scheduler`` and the
teacher-temperature array of ``DINOLoss``), written out with numpy in tests/helpers/dino.py."""

import math

import numpy as np
import pytest

from chada.ssl.schedules import CosineSchedule, LinearWarmupConstant, cosine_value, warmup_value
from tests.helpers.dino import dino_cosine_scheduler, dino_teacher_temp


@pytest.mark.parametrize(("warmup_epochs", "epochs", "niter"), [(2, 7, 5), (1, 3, 4), (0, 4, 3), (3, 3, 2)])
def test_lr_schedule_is_dinos_cosine_scheduler(warmup_epochs: int, epochs: int, niter: int) -> None:
    want = dino_cosine_scheduler(0.3, 1e-3, epochs, niter, warmup_epochs)
    s = CosineSchedule(0.3, 1e-3, epochs * niter, warmup_epochs * niter)
    got = np.array([s(i) for i in range(epochs * niter)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    if warmup_epochs:  # the base LR is reached AT the last warm-up step
        assert s(warmup_epochs * niter - 1) == pytest.approx(0.3)
    assert s(epochs * niter + 5) == 1e-3


def test_weight_decay_and_momentum_schedules_are_dinos() -> None:
    np.testing.assert_allclose(
        [CosineSchedule(0.04, 0.4, 30)(i) for i in range(30)], dino_cosine_scheduler(0.04, 0.4, 10, 3)
    )
    np.testing.assert_allclose(
        [cosine_value(i, 30, 0.996, 1.0) for i in range(30)], dino_cosine_scheduler(0.996, 1, 6, 5)
    )


@pytest.mark.parametrize(("warmup", "epochs"), [(30, 100), (1, 4), (5, 5), (0, 3)])
def test_teacher_temperature_is_one_value_per_epoch(warmup: int, epochs: int) -> None:
    want = dino_teacher_temp(0.04, 0.07, warmup, epochs)
    t = LinearWarmupConstant(0.04, 0.07, warmup)
    np.testing.assert_allclose([t(e) for e in range(epochs)], want, rtol=1e-12)
    if warmup > 1:  # the final temperature is reached AT the last warm-up epoch
        assert t(warmup - 1) == pytest.approx(0.07)


def test_ramp_form_kept_for_measured_runs() -> None:
    # the earlier form, still selectable: start + (end - start) * i / n
    s = CosineSchedule(1.0, 0.1, 100, 10, warmup="ramp")
    assert [s(i) for i in (0, 5, 9, 10)] == pytest.approx([0.0, 0.5, 0.9, 1.0])
    t = LinearWarmupConstant(0.04, 0.07, 30, form="ramp")
    assert [t(0), t(15), t(30), t(500)] == pytest.approx([0.04, 0.055, 0.07, 0.07])
    assert warmup_value(0, 1, 0.0, 1.0) == 0.0  # np.linspace(0, 1, 1) == [0]


def test_cosine_without_warmup_matches_dino_formula() -> None:
    for i in (0, 7, 33, 99):
        expect = 1.0 + 0.5 * (0.996 - 1.0) * (1 + math.cos(math.pi * i / 100))
        assert cosine_value(i, 100, 0.996, 1.0) == pytest.approx(expect)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        CosineSchedule(1.0, 0.0, total_steps=0)
    with pytest.raises(ValueError):
        cosine_value(-1, 10, 1.0, 0.0)
    with pytest.raises(ValueError):
        cosine_value(0, 10, 1.0, 0.0, warmup_steps=-2)
    with pytest.raises(ValueError):
        CosineSchedule(1.0, 0.0, 10, 2, warmup="linear")
    with pytest.raises(ValueError):
        LinearWarmupConstant(0.04, 0.07, 3)(-1)
