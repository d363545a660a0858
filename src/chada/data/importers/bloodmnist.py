"""BloodMNIST (MedMNIST v2): ``bloodmnist.npz`` -> one RGB PNG per image + manifest with its split.

The archive holds ``train_images`` / ``val_images`` / ``test_images`` (``[N, 28, 28, 3]`` uint8) and
``train_labels`` / ``val_labels`` / ``test_labels`` (``[N, 1]``, 8 classes). The published split is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chada.data.importers import ImportLayoutError, finish_manifest, require_file

__all__ = ["import_bloodmnist", "CLASSES", "LAYOUT"]

LAYOUT = """  SOURCE/bloodmnist.npz   (or SOURCE is that file)
    keys: train_images [N,28,28,3] uint8, train_labels [N,1], val_images, val_labels, test_images, test_labels"""

# MedMNIST v2 label names for BloodMNIST (index = label value)
CLASSES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature granulocytes",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
SPLITS = ("train", "val", "test")


def import_bloodmnist(
    source: Path, out: Path, limit: int | None = None, progress: bool = True, **_: object
) -> Path:
    """Write ``OUT/bloodmnist/<split>/<split>_<i>.png`` and ``OUT/manifest.csv``.

    Args:
        source: the ``.npz`` file or a folder holding ``bloodmnist.npz``.
        limit: keep only the first ``limit`` images of each split (quick trials).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    npz = source if source.is_file() else require_file(source / "bloodmnist.npz", "BloodMNIST", LAYOUT)
    try:
        data = np.load(npz, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ImportLayoutError(f"BloodMNIST: {npz} is not a readable .npz archive ({exc})") from exc
    keys = set(data.files)
    want = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    missing = [k for k in want if k not in keys]
    if missing:
        raise ImportLayoutError(
            f"BloodMNIST: {npz} lacks key(s) {missing}; it has {sorted(keys)}.\nExpected layout:\n{LAYOUT}"
        )
    rows = []
    for split in SPLITS:
        images, labels = data[f"{split}_images"], np.asarray(data[f"{split}_labels"]).reshape(-1)
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
            raise ImportLayoutError(
                f"BloodMNIST: {split}_images has shape {images.shape} for {len(labels)} labels; expected [N, H, W, 3]"
            )
        n = len(images) if limit is None else min(limit, len(images))
        folder = out / "bloodmnist" / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(n), desc=f"BloodMNIST {split}", disable=not progress, leave=False):
            rel = f"bloodmnist/{split}/{split}_{i:05d}.png"
            path = out / rel
            if not path.exists():  # re-running an interrupted import skips finished files
                Image.fromarray(np.ascontiguousarray(images[i], dtype=np.uint8)).save(path)
            lab = int(labels[i])
            rows.append(
                {
                    "image_id": f"bloodmnist_{split}_{i:05d}",
                    "dataset": "BloodMNIST",
                    "file": rel,
                    "channel_names": "red;green;blue",
                    "split": split,
                    "label": lab,
                    "label_name": CLASSES[lab] if 0 <= lab < len(CLASSES) else str(lab),
                }
            )
    return finish_manifest(rows, out, "BloodMNIST")
