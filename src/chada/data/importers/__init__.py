"""Importers: each benchmark dataset, in its own published layout, becomes a chada manifest.

``import_dataset(name, source, out, **options) -> Path`` (the written ``manifest.csv``) dispatches to one
module per dataset (``bloodmnist``, ``cyclops``, ``bbbc048``, ``bbbc021``, ``nfkb``, ``bray``,
``chammi``). Every importer checks the folder against the layout it expects and raises
:class:`ImportLayoutError` naming the missing file or column and the layout it wanted, before writing
anything. Images that are already one file per channel are referenced in place (absolute paths);
containers that the manifest readers cannot read directly (MedMNIST ``.npz``, CHAMMI side-by-side
PNGs) are written out as image files under ``OUT``. Layouts, sources and licences: ``docs/datasets.md``.
"""

from __future__ import annotations

import importlib
import os
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas costs ~0.2 s, and `chada --help` builds the import parsers
    import pandas as pd

__all__ = [
    "IMPORTERS",
    "ImportLayoutError",
    "FileLocator",
    "get_importer",
    "import_dataset",
    "require_file",
    "require_columns",
    "seeded_split",
    "grouped_split",
    "finish_manifest",
]

# name -> module; the module defines ``import_<module>(source, out, **options) -> Path`` and ``LAYOUT``.
IMPORTERS: dict[str, str] = {
    "bloodmnist": "bloodmnist",
    "cyclops": "cyclops",
    "bbbc048": "bbbc048",
    "bbbc021": "bbbc021",
    "nfkb": "nfkb",
    "bray": "bray",
    "chammi": "chammi",
}
ALIASES = {
    "transloc": "nfkb",
    "nf-kb": "nfkb",
    "translocation": "nfkb",
    "cellpainting": "bray",
    "bray2017": "bray",
}


class ImportLayoutError(ValueError):
    """The source folder does not match the dataset's published layout (message says what was expected)."""


def get_importer(name: str) -> tuple[Callable[..., Path], str]:
    """``(import function, layout description)`` of a dataset name (case-insensitive, aliases accepted)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in IMPORTERS:
        raise ValueError(f"unknown dataset {name!r}; importers exist for: {', '.join(IMPORTERS)}")
    mod = importlib.import_module(f"chada.data.importers.{IMPORTERS[key]}")
    return getattr(mod, f"import_{IMPORTERS[key]}"), str(getattr(mod, "LAYOUT", ""))


def import_dataset(name: str, source: str | os.PathLike, out: str | os.PathLike, **options: Any) -> Path:
    """Import dataset ``name`` from ``source`` into ``out``; return the manifest path."""
    fn, _ = get_importer(name)
    src = Path(source).expanduser()
    if not src.exists():
        raise ImportLayoutError(f"{name}: source {src} does not exist")
    return fn(src, Path(out).expanduser(), **options)


# ------------------------------------------------------------------------------------ helpers
def require_file(path: Path, dataset: str, layout: str, what: str = "file") -> Path:
    """Return ``path`` if it exists, else raise a layout error that names it and the expected layout."""
    if not path.exists():
        raise ImportLayoutError(f"{dataset}: expected {what} {path} (not found).\nExpected layout:\n{layout}")
    return path


def require_columns(df: pd.DataFrame, columns: Iterable[str], where: Path | str, dataset: str) -> None:
    """Raise a layout error naming every missing column of ``where`` and the columns it has."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ImportLayoutError(f"{dataset}: {where} lacks column(s) {missing}; it has {list(df.columns)}")


def _stable_seed(seed: int, key: str) -> list[int]:
    return [int(seed), zlib.crc32(key.encode())]


def seeded_split(
    labels: Sequence[Any], seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> np.ndarray:
    """Stratified seeded train/val/test assignment (per label value); returns an object array of names."""
    labels = np.asarray([str(v) for v in labels], dtype=object)
    out = np.empty(len(labels), dtype=object)
    for lab in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == lab)
        order = np.random.default_rng(_stable_seed(seed, lab)).permutation(idx)
        n_tr = int(round(fractions[0] * len(order)))
        n_va = int(round(fractions[1] * len(order)))
        out[order[:n_tr]] = "train"
        out[order[n_tr : n_tr + n_va]] = "val"
        out[order[n_tr + n_va :]] = "test"
    return out


def grouped_split(
    groups: Sequence[Any], seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> np.ndarray:
    """Seeded split of whole groups (e.g. compounds), so no group appears in two splits."""
    groups = np.asarray([str(g) for g in groups], dtype=object)
    names = sorted(set(groups.tolist()))
    order = np.random.default_rng(_stable_seed(seed, "groups")).permutation(len(names))
    n_tr = int(round(fractions[0] * len(names)))
    n_va = int(round(fractions[1] * len(names)))
    which = {}
    for rank, i in enumerate(order):
        which[names[i]] = "train" if rank < n_tr else ("val" if rank < n_tr + n_va else "test")
    return np.asarray([which[g] for g in groups], dtype=object)


def finish_manifest(rows: list[dict[str, Any]], out: Path, dataset: str, name: str = "manifest.csv") -> Path:
    """Write ``rows`` as ``OUT/manifest.csv`` atomically (temp file + rename); return its path."""
    import pandas as pd

    from chada.data.manifest import write_manifest

    if not rows:
        raise ImportLayoutError(f"{dataset}: no image found to import")
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    ids = df["image_id"]
    if ids.duplicated().any():
        raise ImportLayoutError(f"{dataset}: duplicated image ids, e.g. {ids[ids.duplicated()].iloc[0]!r}")
    final = out / name
    tmp = out / f".{name}.tmp{Path(name).suffix}"
    write_manifest(df, tmp)
    os.replace(tmp, final)
    return final


class FileLocator:
    """Find a file listed by a metadata table whose recorded folder may not match the local copy.

    Tries, in order: ``root / folder / name``, ``root / basename(folder) / name``, ``root / name``, then
    any file called ``name`` anywhere under ``root`` (an index built once, on the first miss).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, list[Path]] | None = None

    def find(self, name: str, folder: str | None = None) -> Path | None:
        cands = []
        if folder:
            folder = folder.replace("\\", "/").strip("/")
            cands += [self.root / folder / name, self.root / Path(folder).name / name]
        cands.append(self.root / name)
        for c in cands:
            if c.exists():
                return c
        if self._index is None:
            self._index = {}
            for dirpath, _, files in os.walk(self.root):
                for f in files:
                    self._index.setdefault(f, []).append(Path(dirpath) / f)
        hits = self._index.get(Path(name).name, [])
        return hits[0] if len(hits) == 1 else None

    def find_channels(
        self,
        record: dict[str, Any],
        channels: Sequence[str],
        file_column: str,
        folder_column: str,
        missing: list[str],
    ) -> list[Path] | None:
        """One file per channel of a CellProfiler-style image table row, or ``None`` if any is missing.

        ``file_column`` / ``folder_column`` are format strings with ``{ch}`` (e.g. ``"Image_FileName_{ch}"``);
        the paths that were not found are appended to ``missing``.
        """
        files = []
        for ch in channels:
            name, folder = str(record[file_column.format(ch=ch)]), str(record[folder_column.format(ch=ch)])
            path = self.find(name, folder)
            if path is None:
                missing.append(f"{folder}/{name}")
            files.append(path)
        return None if any(f is None for f in files) else files


def iter_split_csv_rows(source: Path) -> Iterable[tuple[str, Path, int, list[str]]]:
    """``(split, file, line number, row)`` of the authors' ``train/val/test.csv`` split files that exist."""
    import csv

    for split in ("train", "val", "test"):
        f = source / f"{split}.csv"
        if not f.exists():
            continue
        with f.open(newline="") as fh:
            for lineno, row in enumerate(csv.reader(fh), start=1):
                if row:
                    yield split, f, lineno, row


def slug(text: Any) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def missing_files_error(dataset: str, missing: list[str], total: int, layout: str) -> ImportLayoutError:
    head = "\n  ".join(missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    return ImportLayoutError(
        f"{dataset}: {len(missing)} of {total} image file(s) not found, e.g.:\n  {head}{more}\nExpected layout:\n{layout}"
    )
