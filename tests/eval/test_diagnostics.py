"""CKA, participation ratio, baseline ratios and shortcut analyses on closed-form cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from chada.eval.diagnostics import (
    chance_normalised,
    linear_cka,
    participation_ratio,
    score_ratio,
    shortcut_explained,
    shortcut_probes,
)

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def test_cka_identity_rotation_scaling():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))
    assert linear_cka(x, x) == pytest.approx(1.0)
    q = ortho_group.rvs(16, random_state=1)
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0)  # centring removes offsets


def test_cka_gram_and_feature_forms_agree():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 50))  # D1*D2 > N^2: Gram form
    y = x[:, :40] @ rng.normal(size=(40, 60)) + rng.normal(size=(30, 60))
    ref = _cka_reference(x, y)
    assert linear_cka(x, y) == pytest.approx(ref)
    assert linear_cka(x[:, :3], y[:, :3]) == pytest.approx(_cka_reference(x[:, :3], y[:, :3]))


def _cka_reference(x, y):
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.trace(k @ l_) / np.sqrt(np.trace(k @ k) * np.trace(l_ @ l_))


def test_cka_independent_is_near_zero():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2000, 10)), rng.normal(size=(2000, 10))
    assert linear_cka(x, y) < 0.02
    with pytest.raises(ValueError, match="same rows"):
        linear_cka(x, y[:10])


def test_participation_ratio_closed_forms():
    rng = np.random.default_rng(3)
    # Exact spectrum: orthonormal columns scaled by sqrt(lambda) -> covariance eigenvalues lambda.
    n = 400
    q, _ = np.linalg.qr(rng.normal(size=(n, 6)))
    q -= q.mean(0)
    q, _ = np.linalg.qr(q)  # keep columns orthonormal after centring
    lam = np.array([4.0, 3.0, 2.0, 1.0, 0.0, 0.0])
    x = q * np.sqrt(lam)
    assert participation_ratio(x) == pytest.approx(lam.sum() ** 2 / (lam**2).sum())  # 100/30
    assert participation_ratio(q) == pytest.approx(6.0)  # isotropic: D
    assert participation_ratio(np.outer(rng.normal(size=50), rng.normal(size=8))) == pytest.approx(1.0)


def test_ratios_and_chance():
    assert score_ratio(0.45, 0.9) == pytest.approx(0.5)
    assert chance_normalised(0.6, 0.9, 0.3) == pytest.approx(0.5)
    assert np.isnan(chance_normalised(0.6, 0.3, 0.3))
    assert np.isnan(chance_normalised(0.6, 0.2, 0.3))  # a model below chance: the ratio means nothing


def test_shortcut_explained_and_probes():
    rng = np.random.default_rng(4)
    n = 300
    count = rng.poisson(30, n).astype(float)
    intensity = rng.random(n)
    noise = rng.normal(size=n)
    # Embedding dominated by cell count; intensity absent.
    emb = np.stack([count, 2 * count, noise, rng.normal(size=n) * 0.1], 1) + 0.05 * rng.normal(size=(n, 4))
    shortcut = np.stack([count, rng.random(n)], 1)
    r = shortcut_explained(shortcut, emb, n_components=2)
    assert r["r2_per_pc"][0] > 0.95 and r["r2_per_pc"][1] < 0.1
    unrelated = shortcut_explained(rng.normal(size=(n, 2)), emb, n_components=2)
    assert unrelated["r2_weighted"] < 0.05
    p = shortcut_probes(emb, {"cell_count": count, "mean_intensity": intensity})
    assert p["cell_count"] > 0.95 and p["mean_intensity"] < 0.05
