"""The shapes synthetic cells are drawn from (:mod:`chada.data.synth`, :mod:`chada.data.plate_synth`):
Gaussian blobs, smooth noise, well-separated points, the nucleus, mitochondria, marker sectors and discs.
Images are ``[H, W]`` float32 on the pixel grids ``yy, xx``; every random draw comes from the caller's
``rng``, in a fixed order, so one seed gives one image."""

from __future__ import annotations

import numpy as np

__all__ = [
    "discs",
    "gauss_blobs",
    "mitochondria",
    "nucleus_ellipse",
    "sector",
    "separated_points",
    "smooth_noise",
]


def gauss_blobs(
    yy: np.ndarray, xx: np.ndarray, pos: np.ndarray, sig: np.ndarray, amp: np.ndarray
) -> np.ndarray:
    out = np.zeros(yy.shape, np.float32)
    for (py, px), s, a in zip(pos, sig, amp):
        out += a * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * s * s))
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-6)


def separated_points(
    rng: np.random.Generator, n: int, cy: float, cx: float, radius: float, min_sep: float
) -> np.ndarray:
    pts: list[tuple[float, float]] = []
    tries = 0
    while len(pts) < n:
        tries += 1
        r = radius * np.sqrt(rng.random())
        t = 2 * np.pi * rng.random()
        p = (cy + r * np.sin(t), cx + r * np.cos(t))
        # The separation constraint is dropped only if the disk is too crowded; this happens for both
        # classes alike, so it cannot leak the label.
        if tries > 4000 or all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_sep**2 for q in pts):
            pts.append(p)
    arr = np.asarray(pts, np.float32)
    return arr[rng.permutation(n)]  # exchangeable order: both halves identically distributed


def nucleus_ellipse(
    rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, radius: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """``(nuclear radius, [H, W] elliptic distance, [H, W] soft nucleus)``: an ellipse at a random angle
    around the cell centre (``dy``, ``dx``: each pixel's offset from it)."""
    n_r = radius * 0.45 * rng.uniform(0.9, 1.1)
    ecc = rng.uniform(0.8, 1.0)
    theta = rng.uniform(0, np.pi)
    ry = dy * np.cos(theta) - dx * np.sin(theta)
    rx = dy * np.sin(theta) + dx * np.cos(theta)
    nuc_d = np.sqrt((ry / ecc) ** 2 + (rx * ecc) ** 2)
    return n_r, nuc_d, 1.0 / (1.0 + np.exp((nuc_d - n_r) / 0.7))


def mitochondria(
    rng: np.random.Generator, cy: float, cx: float, n_r: float, radius: float, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """15-29 mitochondria between the nucleus and the membrane: ``([N, 2] centres, [N] sigmas, [N] amplitudes)``."""
    n_mito = int(rng.integers(15, 30))
    ang = rng.uniform(0, 2 * np.pi, n_mito)
    rad = rng.uniform(n_r * 1.1, radius * 0.9, n_mito)
    pos = np.stack([cy + rad * np.sin(ang), cx + rad * np.cos(ang)], 1)
    return pos, rng.uniform(0.6, 1.2, n_mito) * scale, rng.uniform(0.4, 1.0, n_mito)


def sector(phi: np.ndarray, angle: float, width: float) -> np.ndarray:
    """Pixels within one angular sigma of a marker domain's centre angle (where it is above 61 % of its peak)."""
    return np.abs(np.angle(np.exp(1j * (phi - angle)))) < width


def discs(yy: np.ndarray, xx: np.ndarray, pos: np.ndarray, radius: np.ndarray) -> np.ndarray:
    out = np.zeros(yy.shape, bool)
    for (py, px), r in zip(pos, radius):
        out |= (yy - py) ** 2 + (xx - px) ** 2 < r * r
    return out
