"""The linear-time percentiles of the percentile normalisation equal torch.quantile bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chada.data.normalize import _percentiles


@pytest.mark.parametrize("kind", ["uniform", "ties", "uint16", "constant", "tiny"])
@pytest.mark.parametrize(("low", "high"), [(1.0, 99.8), (0.0, 100.0), (2.5, 97.5)])
def test_percentiles_equal_torch_quantile(kind: str, low: float, high: float) -> None:
    rng = np.random.default_rng(0)
    shape = (4, 1) if kind == "tiny" else (4, 224 * 224 + 7)
    a = {
        "uniform": lambda: rng.random(shape),
        "ties": lambda: rng.integers(0, 20, shape),
        "uint16": lambda: np.round(rng.random(shape) * 65535),
        "constant": lambda: np.full(shape, 3.0),
        "tiny": lambda: rng.random(shape),
    }[kind]().astype(np.float32)
    flat = torch.from_numpy(a)
    want = torch.quantile(flat, torch.tensor([low / 100, high / 100]), dim=1)
    lo, hi = _percentiles(flat, low, high)
    assert torch.equal(lo, want[0]) and torch.equal(hi, want[1])


def test_nan_channel_gives_nan_like_quantile() -> None:
    a = torch.rand(3, 500)
    a[1, 7] = float("nan")
    want = torch.quantile(a, torch.tensor([0.01, 0.998]), dim=1)
    lo, hi = _percentiles(a, 1.0, 99.8)
    assert torch.equal(lo.isnan(), want[0].isnan()) and torch.equal(hi[[0, 2]], want[1][[0, 2]])
