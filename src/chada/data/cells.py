"""A dataset over fields that yields the single-cell crops of one field (``chada embed --objects``).

Item ``i`` of :class:`CellDataset` reads field ``i`` of a :class:`~chada.data.dataset.ManifestDataset`
once (normalised at native size) and its label image (the row's ``objects_file``), and returns::

    {"field": i, "cells": [sample, ...], "objects": {column: [n]}}

one sample dict per kept object (the :mod:`chada.data.dataset` sample keys; ``image`` is the crop
``[C, S, S]`` resized to ``size``), so DataLoader workers cut the crops and the main process only
flattens the lists. ``objects`` is the :func:`chada.data.objects.object_table` of the kept objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from chada.data.dataset import ManifestDataset, _clean, make_sample, resize_image
from chada.data.manifest import READ_HINT, _is_missing, _resolve
from chada.data.objects import ObjectOptions, crop_objects, object_table, validate_labels
from chada.errors import InputError

__all__ = ["CellDataset", "flatten_cells", "objects_path"]


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
        meta = {k: _clean(row.get(k)) for k in self.fields.meta_columns}
        cells = [
            make_sample(tensor[j], list(names), image_id=iid, dataset=str(_clean(row.get("dataset")) or ""),
                        split=str(_clean(row.get("split")) or "train"),
                        label=_clean(row.get(self.fields.label_column)), meta=meta, transform=None)  # fmt: skip
            for j in range(n)
        ]
        for j, cell in enumerate(cells):
            cell["where"] = f"image {iid!r} object {int(table['object_id'][j])}"
        return {"field": index, "cells": cells, "objects": table, "channel_names": list(names)}


def flatten_cells(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A DataLoader collate: the fields' items as they are (the loop flattens their cells)."""
    return items
