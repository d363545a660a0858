"""Platemaps: a plate's layout table (well -> compound, dose, control ...) joined to scanned images.

A platemap is a CSV/TSV with one row per well. Its join columns are found by name, case-insensitive
and ignoring a pycytominer ``Metadata_`` prefix:

- the well column (required): ``well``, ``well_id``, ``wellid``, ``well_name``, ``well_position``;
- the plate column (optional): ``plate``, ``plate_id``, ``plateid``, ``plate_name``, ``barcode``,
  ``plate_barcode``. It is joined on only when the images have a plate field too; a platemap without
  one applies to every plate (the usual "one layout for all plates").

Well names are normalised before the join (and in the manifest): ``B3``, ``b03``, ``B003`` and the
Opera/Phenix ``r02c03`` all become ``B03`` (row letters upper-cased, column number two digits at least).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from chada.errors import InputError, short_message, type_name

__all__ = [
    "WELL_NAMES",
    "PLATE_NAMES",
    "Platemap",
    "join_platemap",
    "normalize_well",
    "read_platemap",
    "strip_prefix",
]

WELL_NAMES = ("well", "well_id", "wellid", "well_name", "well_position")
PLATE_NAMES = ("plate", "plate_id", "plateid", "plate_name", "barcode", "plate_barcode")
METADATA_PREFIX = "Metadata_"

_LETTER_WELL = re.compile(r"^([A-Za-z]{1,2})0*(\d{1,3})$")
_RC_WELL = re.compile(r"^[rR]0*(\d{1,2})[cC]0*(\d{1,3})$")


def strip_prefix(name: str) -> str:
    """``"Metadata_Well"`` -> ``"well"``: the name a join column is recognised by."""
    low = str(name).strip().lower()
    return low[len(METADATA_PREFIX) :] if low.startswith(METADATA_PREFIX.lower()) else low


def normalize_well(value: object) -> str:
    """``"b3"`` / ``"B003"`` / ``"r02c03"`` -> ``"B03"``; anything else comes back stripped, unchanged."""
    text = str(value).strip()
    m = _LETTER_WELL.match(text)
    if m:
        return f"{m.group(1).upper()}{int(m.group(2)):02d}"
    m = _RC_WELL.match(text)
    if m and 1 <= int(m.group(1)) <= 26:
        return f"{chr(64 + int(m.group(1)))}{int(m.group(2)):02d}"
    return text


def _find_column(columns: list[str], names: tuple[str, ...], path: Path, what: str) -> str | None:
    found = [c for c in columns if strip_prefix(c) in names]
    if len(found) > 1:
        raise InputError(f"platemap {path}: several {what} columns {found}; keep one")
    return found[0] if found else None


@dataclass
class Platemap:
    """A read platemap: its table (join columns normalised) and which columns are the join keys."""

    path: Path
    table: pd.DataFrame
    well_column: str
    plate_column: str | None

    @property
    def value_columns(self) -> list[str]:
        """The columns that become manifest metadata (every column but the join keys)."""
        keys = {self.well_column, self.plate_column}
        return [c for c in self.table.columns if c not in keys]

    def lookup(self, use_plate: bool) -> dict[tuple[str, ...], dict]:
        """``(plate, well)`` (or ``(well,)``) -> the row's value columns.

        Raises:
            InputError: two rows for one key, naming the key and the rows (1 = first data row).
        """
        keys = [self.plate_column, self.well_column] if use_plate else [self.well_column]
        out: dict[tuple[str, ...], dict] = {}
        first_row: dict[tuple[str, ...], int] = {}
        dups: list[str] = []
        for i, row in enumerate(self.table.to_dict("records")):
            key = tuple(str(row[k]) for k in keys)
            if key in out:
                dups.append(f"{'/'.join(key)} (rows {first_row[key]} and {i + 1})")
                continue
            first_row[key] = i + 1
            out[key] = {c: row[c] for c in self.value_columns}
        if dups:
            hint = "" if use_plate or self.plate_column is None else (
                "; the platemap has a plate column: add a {plate} field to the pattern to join on it"
            )  # fmt: skip
            raise InputError(
                f"platemap {self.path}: {len(dups)} well(s) listed twice: {', '.join(dups[:10])}"
                f"{' ...' if len(dups) > 10 else ''}{hint}"
            )
        return out


def read_platemap(path: str | Path) -> Platemap:
    """Read a platemap CSV/TSV (every cell as text, so ``"001"`` plates survive).

    Raises:
        FileNotFoundError: no such file.
        InputError: not a readable table, no well column (listing the columns found), two well or
            plate columns, an empty well cell.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"platemap not found: {p}")
    if p.is_dir():
        raise InputError(f"platemap {p}: is a directory; a platemap is a .csv or .tsv file")
    try:
        df = pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",", dtype=str)
    except Exception as exc:  # noqa: BLE001 - ParserError, EmptyDataError, UnicodeDecodeError: not a table
        why = short_message(f"{type_name(exc)}: {exc}", limit=200, one_line=True)
        raise InputError(f"platemap {p}: not a readable CSV/TSV ({why})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    well = _find_column(list(df.columns), WELL_NAMES, p, "well")
    if well is None:
        raise InputError(
            f"platemap {p}: no well column (looked for {', '.join(WELL_NAMES)}, any case, optional "
            f"'Metadata_' prefix; columns found: {list(df.columns)})"
        )
    plate = _find_column(list(df.columns), PLATE_NAMES, p, "plate")
    empty = df[well].isna() | (df[well].astype(str).str.strip() == "")
    if empty.any():
        rows = [str(int(i) + 1) for i in empty.to_numpy().nonzero()[0][:10]]
        raise InputError(f"platemap {p}: empty well in row(s) {', '.join(rows)}")
    df[well] = df[well].map(normalize_well)
    if plate is not None:
        df[plate] = df[plate].astype(str).str.strip()
    return Platemap(path=p, table=df.reset_index(drop=True), well_column=well, plate_column=plate)


def join_platemap(keys: list[tuple], key_fields: list[str], path: str | Path) -> tuple[Platemap, dict, set]:
    """The platemap at ``path`` joined to image keys (tuples of ``key_fields`` values) on their well field, and
    on their plate field when both have one: ``(platemap, {image key: platemap values}, keys whose well the
    platemap lacks)``."""
    pm = read_platemap(path)
    well_f = [f for f in key_fields if strip_prefix(f) in WELL_NAMES]
    plate_f = [f for f in key_fields if strip_prefix(f) in PLATE_NAMES]
    if not well_f:
        raise InputError(
            f"--platemap given but the pattern has no well field to join it on (fields: {key_fields})"
        )
    use_plate = bool(plate_f) and pm.plate_column is not None
    lookup = pm.lookup(use_plate)
    wi = key_fields.index(well_f[0])
    pi = key_fields.index(plate_f[0]) if use_plate else None
    values, absent = {}, set()
    for key in keys:
        jk = (key[pi], key[wi]) if use_plate else (key[wi],)
        if jk in lookup:
            values[key] = lookup[jk]
        else:
            absent.add(key)
    return pm, values, absent
