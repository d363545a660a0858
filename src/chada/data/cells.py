"""A dataset over fields that yields the single-cell crops of one field (``chada embed --objects``).

Item ``i`` of :class:`CellDataset` reads field ``i`` of a :class:`~chada.data.dataset.ManifestDataset`
once (normalised at native size) and its label image (the row's ``objects_file``), and returns::

    {"field": i, "crops": [n, C, s, s] float32, "objects": {column: [n]}, "channel_names": [...],
     "image": {"image_id", "dataset", "split", "label", "meta"}}

the crops of its n kept objects resized to ``size`` (one tensor: a DataLoader worker sends one
shared-memory block per field, not one per cell) and the :func:`chada.data.objects.object_table`
of those objects. :func:`cells_of` turns an item into one sample dict per cell (the
:mod:`chada.data.dataset` sample keys, ``image`` = a view of the crop ``[C, s, s]``) in the main
process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from chada.data.dataset import ManifestDataset, _clean, make_sample, resize_image
from chada.data.manifest_rows import READ_HINT, _is_missing, _resolve
from chada.data.objects import ObjectOptions, crop_objects, object_table, validate_labels
from chada.errors import InputError

__all__ = ["CellDataset", "cells_of", "objects_path"]


def objects_path(row: dict[str, Any], root: Any, column: str = "objects_file") -> Any:
    """The resolved label-image path of a manifest row, or an :class:`InputError` naming the image."""
    value = row.get(column)
    if value is None or _is_missing(value) or not str(value).strip():
        raise InputError(
            f"image {str(row.get('image_id'))!r}: no label image in column {column!r}; --objects needs one "
            "label image per row (`chada data scan --objects-pattern`)"
        )
    return _resolve(str(value).strip(), root)


class CellDataset(Dataset):
    """Single-cell crops of every field of ``fields``.

    Args:
        fields: the fields, read at native size (``size=None``) with the run's normalisation.
        options: crop size (must be set), filters, neighbour masking.
        size: the side crops are resized to (the model's size); None keeps ``options.crop_size``.
    """

    def __init__(self, fields: ManifestDataset, options: ObjectOptions, size: int | None = None) -> None:
        if options.crop_size is None:
            raise ValueError("options.crop_size must be set")
        if options.column not in fields.frame.columns:
            raise InputError(
                f"the manifest has no {options.column!r} column: --objects needs a label image per row "
                "(`chada data scan --objects-pattern`)"
            )
        self.fields, self.options, self.size = fields, options, size
        self.frame, self.root = fields.frame, fields.root

    def __len__(self) -> int:
        return len(self.fields)

    def read_objects(self, index: int, hw: tuple[int, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(labels [H, W] int64, object table)`` of field ``index`` (of size ``hw``), filters applied."""
        from chada.data.readers import read_raw

        row = self.fields._rows[index]
        path = objects_path(row, self.root, self.options.column)
        where = f"image {str(row.get('image_id'))!r}: label image {path}"
        try:
            raw = read_raw(path)
        except FileNotFoundError as exc:
            raise InputError(f"{where} not found; {READ_HINT}") from exc
        labels = validate_labels(raw, hw, where)
        opts = self.options
        return labels, object_table(labels, opts.min_area, opts.max_area, opts.skip_border)

    def __getitem__(self, index: int) -> dict[str, Any]:
        img, names = self.fields.read(index)  # [C, H, W] normalised, native size
        labels, table = self.read_objects(index, tuple(img.shape[-2:]))
        row = self.fields._rows[index]
        iid = str(row["image_id"])
        crops = crop_objects(img.numpy(), labels, table, int(self.options.crop_size),
                             self.options.mask_neighbours, where=f"image {iid!r}")  # fmt: skip
        n, c = crops.shape[:2]
        tensor = torch.from_numpy(crops)
        if self.size is not None and n:
            s = int(self.options.crop_size)
            # all crops' channels as one [n*C, S, S] image: the same per-channel resize, one call
            tensor = resize_image(tensor.reshape(n * c, s, s), self.size).reshape(n, c, self.size, self.size)
        image = {"image_id": iid, "dataset": str(_clean(row.get("dataset")) or ""),
                 "split": str(_clean(row.get("split")) or "train"), "label": _clean(row.get(self.fields.label_column)),
                 "meta": {k: _clean(row.get(k)) for k in self.fields.meta_columns}}  # fmt: skip
        return {
            "field": index,
            "crops": tensor,
            "objects": table,
            "channel_names": list(names),
            "image": image,
        }


def cells_of(item: dict[str, Any]) -> list[dict[str, Any]]:
    """One sample dict per cell of a :class:`CellDataset` item (``image`` ``[C, s, s]``, a view of the
    field's crops; ``where`` names the image and object in error messages)."""
    img, ids = item["image"], item["objects"]["object_id"]
    cells = []
    for j in range(len(ids)):
        cell = make_sample(item["crops"][j], list(item["channel_names"]), transform=None, **img)
        cell["where"] = f"image {img['image_id']!r} object {int(ids[j])}"
        cells.append(cell)
    return cells
