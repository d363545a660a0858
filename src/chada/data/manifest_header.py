"""The header row of a CSV/TSV manifest, read as written (pandas renames a repeated column silently).

``pd.read_csv`` turns a header ``image_id,file,label,file`` into the columns ``file`` and ``file.1``:
the second ``file`` is then ignored without a word. :func:`duplicated_columns` reads the first row with
the :mod:`csv` module (same separator and quoting rules) so that the manifest readers can refuse it.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

__all__ = ["duplicated_columns"]


def duplicated_columns(path: str | Path, suffix: str = ".csv") -> list[str]:
    """Column names written more than once in the header row of ``path`` (stripped), in header order.

    ``suffix``: the manifest's (``.tsv`` is tab-separated; Parquet keeps its columns unique itself, so
    it gives ``[]``). An unreadable or binary file gives ``[]``: the table parser reports it.
    """
    if suffix in (".parquet", ".pq"):
        return []
    sep = "\t" if suffix == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh, delimiter=sep), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    counts = Counter(name.strip() for name in header)
    return [name for name, n in counts.items() if n > 1 and name]
