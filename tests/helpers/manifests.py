"""Small image manifests written on the fly, shared by test files of several packages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tifffile


def write_manifest(folder, specs, name="manifest.csv"):
    """specs: list of (dataset, n_channels, size, n_images). One multi-channel TIFF per image."""
    rng = np.random.default_rng(0)
    rows = []
    for ds, c, size, n in specs:
        for i in range(n):
            iid = f"{ds}_{i:03d}"
            tifffile.imwrite(
                folder / f"{iid}.tif",
                rng.integers(0, 4000, (c, size, size), dtype=np.uint16),
                photometric="minisblack",
            )
            rows.append(
                {
                    "image_id": iid,
                    "dataset": ds,
                    "file": f"{iid}.tif",
                    "channel_names": ";".join(f"{ds}_ch{j}" for j in range(c)),
                    "split": "train" if i % 3 else "test",
                    "label": f"class{i % 2}",
                    "plate": f"P{i % 2}",
                }
            )
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
