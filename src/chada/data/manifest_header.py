"""The header row of a CSV/TSV manifest, read as written (pandas renames a repeated column silently).

``pd.read_csv`` turns a header ``image_id,file,label,file`` into the columns ``file`` and ``file.1``:
the second ``file`` is then ignored without a word. :func:`duplicated_columns` reads the first row with
the :mod:`csv` module (same separator and quoting rules) so that the manifest readers can refuse it.
"""

from __future__ import annotations

import csv
import os
import stat
from collections import Counter
from pathlib import Path

__all__ = ["check_header", "duplicated_columns"]


def check_header(path: Path, suffix: str, error: type[Exception]) -> None:
    """Raise ``error`` for a manifest that is not a regular file (a FIFO or device would block the
    reader forever: checked with ``stat``, never opened) or whose header names a column twice."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise error(f"{path}: is not a regular file (a FIFO, socket or device?); a manifest is a .csv, .tsv or "
                    ".parquet file")  # fmt: skip
    if twice := duplicated_columns(path, suffix):  # pandas would rename the second copy and ignore it
        raise error(
            f"{path}: column(s) {', '.join(map(repr, twice))} appear twice in the header; keep one of each"
        )


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
