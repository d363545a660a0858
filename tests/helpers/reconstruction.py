"""The channel-reconstruction toy manifest: 3-channel 32-px images whose third channel ``T`` is a shifted
copy of the first (smooth random fields), so an encoder that keeps the spatial layout lets a decoder
predict it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

SIZE = 32


def field(rng: np.random.Generator) -> np.ndarray:
    noise = torch.from_numpy(rng.normal(size=(1, 1, 4, 4))).float()
    return F.interpolate(noise, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[0, 0].numpy()


def toy_manifest(tmp_path, n: int = 96, extra_two_channel: int = 0) -> str:
    """``n`` images A;B;T with T = A shifted by 4 px, every 4th in the test split (+ 2-channel images
    without T, which reconstruction must skip)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n + extra_two_channel):
        a, b = field(rng), field(rng)
        two = i >= n
        img = np.stack([a, b] if two else [a, b, np.roll(a, 4, axis=1)]).astype(np.float32)
        np.save(tmp_path / f"im{i:03d}.npy", img)
        rows.append(
            dict(
                image_id=f"im{i:03d}",
                dataset="toy",
                file=f"im{i:03d}.npy",
                channel_names="A;B" if two else "A;B;T",
                split="test" if i % 4 == 0 else "train",
                reconstruction_target=None if two else "T",
            )  # fmt: skip
        )
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)
