"""A tiny CHAMMI tree in the published layout (the CHAMMI tests and the ``--precision`` CLI tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

N_CH = {"Allen": 3, "HPA": 4, "CP": 5}
TASKS = {"Allen": ["Task_one", "Task_two"], "HPA": ["Task_one", "Task_two", "Task_three"],
         "CP": ["Task_one", "Task_two", "Task_three", "Task_four"]}  # fmt: skip


def make_chammi(root, n_train=6, n_per_task=3, w=8, h=8):
    """A tiny CHAMMI tree in the published layout; images hold known per-channel constants."""
    rng = np.random.default_rng(0)
    planes = {}
    for ds, c in N_CH.items():
        rows = []
        splits = ["Train"] * n_train + [t for t in TASKS[ds] for _ in range(n_per_task)]
        for i, split in enumerate(splits):
            rel = f"{ds}/plate{i % 2}/img_{i}.png"
            chans = rng.integers(0, 255, (c, h, w), dtype=np.uint8)
            chans[:, 0, 0] = np.arange(c) * 40  # each channel identifiable
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate(list(chans), axis=1)).save(root / rel)  # H x (W*C)
            planes[(ds, i)] = chans
            row = {"file_path": rel, "ID": i, "channel_width": w, "Label": ["a", "b", "c"][i % 3],
                   "train_test_split": split, "cell_type": ["x", "y"][i % 2], "Plate": f"P{i % 3}"}  # fmt: skip
            for t in TASKS[ds]:
                row[t] = split == t
            rows.append(row)
        pd.DataFrame(rows).to_csv(root / ds / "enriched_meta.csv", index=False)
    return planes
