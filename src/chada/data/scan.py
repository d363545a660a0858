"""``chada data scan``: a manifest from a plate folder, by a filename pattern with named fields.

One file per channel, named by its fields, e.g. ImageXpress' ``PLATE/B03_s2_w1.tif``::

    scan_folder("plates", "{plate}/{well}_s{site}_w{channel}.tif",
                channel_names="w1=DAPI,w2=Tubulin,w3=Actin", platemap="platemap.csv",
                objects_pattern="{plate}/{well}_s{site}_cp_masks.tif")

**Patterns** are matched against each file's path relative to ROOT (``/`` separators), whole:

- the ``parse`` library's syntax (``{name}`` fields, ``{name:d}`` for a number, ``{}`` for a part to
  ignore). A field without a type never spans a ``/``, so each folder level needs its own field; the
  match ignores case (``.TIF`` matches ``.tif``);
- or, with ``regex=True``, a Python regular expression with named groups (``(?P<well>[A-P]\\d+)``).

The ``channel`` field is required. The other fields form the image key: one manifest row per key,
its channel files in channel order. ``channel_names`` (``"w1=DAPI,w2=Tubulin"``) names the channel
values and fixes their order; a key is the value itself (``1=DAPI``) or, as ImageXpress writes it,
letters and the value (``w1=DAPI`` for ``_w{channel}`` matching ``1``). Without it
the values are the channel names, in natural order. ``objects_pattern`` (same syntax, the key's
fields and no ``channel``) finds one label image per key, written to ``objects_file``; a file that
matches both patterns is a label image.

**What is an error** (each listed by name; :class:`ScanError`, exit 2): an image file (a suffix the
readers know, :data:`chada.data.readers.SUPPORTED_SUFFIXES`) that matches no pattern, a channel value
``channel_names`` does not name, two files for one key and channel (or two label images for one key),
an image missing a channel, an image without a label image, a label image without an image, and a
well absent from the platemap. Other files (CSV, JSON, text, hidden files) are skipped and counted,
as is anything matching an ``ignore`` glob. With ``allow_incomplete`` the images missing a channel,
a label image or a platemap row are dropped, unmatched image files and lone label images skipped,
and the counts reported; unknown channels and duplicates stay errors (they mean the pattern is wrong).

**Columns written**: ``image_id`` (the key's values joined by ``_``), ``dataset``, ``channel_files``,
``channel_names``, ``objects_file`` (with ``objects_pattern``), then every field but ``channel`` and
every platemap column but its join keys, as metadata, optionally prefixed (``Metadata_``). Paths are
relative to ``base`` (the manifest's folder, which :mod:`chada.data.manifest` resolves them against).
"""

from __future__ import annotations

import fnmatch
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from chada.data.manifest import STANDARD_COLUMNS
from chada.data.platemap import PLATE_NAMES, WELL_NAMES, join_platemap, normalize_well, strip_prefix
from chada.data.readers import is_supported
from chada.data.scan_patterns import Matcher, channel_name, natural_key, parse_channel_names, walk_files
from chada.errors import InputError

__all__ = [
    "ScanError",
    "ScanProblem",
    "ScanResult",
    "Matcher",
    "parse_channel_names",
    "scan_folder",
    "natural_key",
]

RESERVED = (*STANDARD_COLUMNS, "objects_file")


@dataclass(frozen=True)
class ScanProblem:
    """One class of defect: a kind, its names (files, image keys or wells) and a one-line message."""

    kind: str
    message: str
    names: tuple[str, ...] = ()


class ScanError(InputError):
    """A folder that does not give a clean manifest; ``problems`` lists every class of defect."""

    def __init__(self, root: Path, problems: list[ScanProblem]) -> None:
        self.problems = problems
        lines = "; ".join(p.message for p in problems)
        super().__init__(f"{root}: {len(problems)} problem(s), nothing written: {lines}")


@dataclass
class ScanResult:
    """The manifest table and what was skipped or dropped on the way (counts for the summary)."""

    table: pd.DataFrame
    channel_names: list[str]
    n_files: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files not used
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> images dropped (allow_incomplete)


def _listing(names: list[str], limit: int = 12) -> str:
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


@dataclass
class _Found:
    images: dict[tuple, dict[str, list[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    objects: dict[tuple, list[str]] = field(default_factory=lambda: defaultdict(list))
    unmatched: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _key_of(values: dict[str, str], key_fields: list[str]) -> tuple[str, ...]:
    return tuple(
        normalize_well(values[f]) if strip_prefix(f) in WELL_NAMES else values[f] for f in key_fields
    )


def _collect(
    root: Path, image: Matcher, objects: Matcher | None, key_fields: list[str], ignore: tuple[str, ...]
) -> _Found:
    found = _Found()
    for rel in walk_files(root):
        if any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(rel.rsplit("/", 1)[-1], g) for g in ignore):
            found.skipped["matching --ignore"] += 1
            continue
        hit = objects.match(rel) if objects is not None else None
        if hit is not None:
            found.objects[_key_of(hit, key_fields)].append(rel)
            continue
        hit = image.match(rel)
        if hit is not None:
            found.images[_key_of(hit, key_fields)][hit["channel"]].append(rel)
        elif is_supported(rel):
            found.unmatched.append(rel)
        else:
            found.skipped["not an image file"] += 1
    return found


def _check_patterns(image: Matcher, objects: Matcher | None, metadata_prefix: str) -> list[str]:
    """The key fields; refuses a pattern without ``channel`` or with a reserved field name."""
    if "channel" not in image.fields:
        raise InputError(
            f"{image.what} {image.pattern!r} has no {{channel}} field (fields: {', '.join(image.fields)}); "
            "name the part of the file name that tells the channel, e.g. '{well}_s{site}_w{channel}.tif'"
        )
    key_fields = [f for f in image.fields if f != "channel"]
    bad = [f for f in key_fields if _column(f, metadata_prefix) in RESERVED]
    if bad:
        raise InputError(f"{image.what}: field name(s) {bad} are manifest columns; rename them")
    if objects is not None and sorted(objects.fields) != sorted(key_fields):
        raise InputError(
            f"{objects.what} {objects.pattern!r}: its fields {objects.fields} must be the image key's "
            f"fields {key_fields} (the image pattern's fields without 'channel')"
        )
    return key_fields


def _column(name: str, prefix: str) -> str:
    return name if not prefix or name.lower().startswith(prefix.lower()) else prefix + name


def _resolve_channels(found: _Found, pairs: list[tuple[str, str]]) -> tuple[list[str], list[ScanProblem]]:
    """Rename channel values to channel names in place; return the channel order and any problem."""
    values = sorted({v for chans in found.images.values() for v in chans}, key=natural_key)
    if not pairs:
        return values, []
    name_of = {v: channel_name(v, pairs) for v in values}
    unknown = [v for v, n in name_of.items() if len(n) != 1]
    if unknown:
        files = [f for chans in found.images.values() for v in unknown for f in chans.get(v, [])]
        named = ", ".join(k for k, _ in pairs)
        return [], [ScanProblem("unknown_channel", f"channel value(s) {unknown} not named (or named twice) in "
                                f"--channel-names ({named}), in {len(files)} file(s): {_listing(files, 5)}", tuple(files))]  # fmt: skip
    for key in list(found.images):
        found.images[key] = {name_of[v][0]: files for v, files in found.images[key].items()}
    return [n for _, n in pairs], []


def _key_text(key: tuple[str, ...]) -> str:
    return "/".join(key) if key else "(no key fields)"


def _file_problems(
    found: _Found, channels: list[str], want_objects: bool
) -> tuple[list[ScanProblem], dict[str, set]]:
    """Duplicates (always errors) and the incomplete images, by reason (errors unless dropped)."""
    problems: list[ScanProblem] = []
    dups = [
        f"{_key_text(k)} {c}: {' and '.join(fs)}"
        for k, chans in found.images.items()
        for c, fs in chans.items()
        if len(fs) > 1
    ]
    dups += [
        f"{_key_text(k)} label image: {' and '.join(fs)}" for k, fs in found.objects.items() if len(fs) > 1
    ]
    if dups:
        problems.append(ScanProblem("duplicate", f"{len(dups)} duplicate key(s), two files for one image and channel "
                                    f"(a field missing from the pattern?): {_listing(dups, 5)}", tuple(dups)))  # fmt: skip
    incomplete: dict[str, set] = defaultdict(set)
    for key, chans in found.images.items():
        if any(c not in chans for c in channels):
            incomplete["missing a channel"].add(key)
        if want_objects and key not in found.objects:
            incomplete["without a label image"].add(key)
    return problems, incomplete


def _absent_wells_problem(absent: set, key_fields: list[str], path: str | Path) -> ScanProblem:
    wf = [i for i, f in enumerate(key_fields) if strip_prefix(f) in (*WELL_NAMES, *PLATE_NAMES)]
    wells = sorted({"/".join(k[i] for i in wf) for k in absent}, key=natural_key)
    return ScanProblem("not_in_platemap", f"{len(wells)} well(s) absent from the platemap {path} "
                       f"({len(absent)} image(s)): {_listing(wells)}", tuple(wells))  # fmt: skip


def _rows(keys: list[tuple], found: _Found, channels: list[str], key_fields: list[str], plate_values: dict,
          opts: dict) -> pd.DataFrame:  # fmt: skip
    base, prefix = opts["base"], opts["metadata_prefix"]

    def path(rel: str) -> str:
        full = (opts["root"] / rel).resolve()
        return full.as_posix() if base is None else Path(os.path.relpath(full, base)).as_posix()

    rows = []
    for key in keys:
        row: dict[str, Any] = {
            "image_id": "_".join(key) if key else "image",
            "dataset": opts["dataset"],
            "channel_files": ";".join(path(found.images[key][c][0]) for c in channels),
            "channel_names": ";".join(channels),
        }
        if opts["objects"]:
            row["objects_file"] = path(found.objects[key][0])
        row.update({_column(f, prefix): v for f, v in zip(key_fields, key)})
        row.update({_column(c, prefix): v for c, v in plate_values.get(key, {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def scan_folder(
    root: str | Path,
    pattern: str,
    *,
    regex: bool = False,
    channel_names: str | None = None,
    platemap: str | Path | None = None,
    objects_pattern: str | None = None,
    metadata_prefix: str = "",
    allow_incomplete: bool = False,
    dataset: str | None = None,
    ignore: tuple[str, ...] = (),
    base: str | Path | None = None,
) -> ScanResult:
    """Scan ``root`` into a manifest table (see the module docstring for the rules).

    Args:
        base: folder the written paths are relative to (the manifest's); ``None``: absolute paths.

    Raises:
        ScanError: every class of defect found, each with its names (exit 2).
        InputError / FileNotFoundError: a bad pattern, option, root or platemap.
    """
    root = Path(root)
    if not root.is_dir():
        raise (NotADirectoryError if root.exists() else FileNotFoundError)(f"ROOT {root}: no such folder")
    image = Matcher(pattern, regex, "--pattern" if not regex else "--pattern (regex)")
    objects = Matcher(objects_pattern, regex, "--objects-pattern") if objects_pattern else None
    key_fields = _check_patterns(image, objects, metadata_prefix)
    pairs = parse_channel_names(channel_names)
    found = _collect(root, image, objects, key_fields, tuple(ignore))
    n_files = sum(len(fs) for ch in found.images.values() for fs in ch.values()) + sum(
        map(len, found.objects.values())
    )
    if not found.images:
        example = f" (unmatched image files: {_listing(found.unmatched, 3)})" if found.unmatched else ""
        raise InputError(f"{root}: no file matches --pattern {pattern!r}{example}")
    channels, problems = _resolve_channels(found, pairs)
    more, incomplete = _file_problems(found, channels, objects is not None)
    problems += more
    orphans = sorted((_key_text(k) for k in found.objects if k not in found.images), key=natural_key)
    pm, plate_values = None, {}
    if platemap is not None:
        pm, plate_values, absent = join_platemap(list(found.images), key_fields, platemap)
        if absent:
            incomplete["with a well absent from the platemap"] = absent
            if not allow_incomplete:
                problems.append(_absent_wells_problem(absent, key_fields, platemap))
    if not allow_incomplete:
        problems += _incomplete_problems(found, channels, incomplete, orphans)
    if problems:
        raise ScanError(root, problems)
    drop = set().union(*incomplete.values()) if incomplete else set()
    keys = sorted((k for k in found.images if k not in drop), key=lambda k: [natural_key(v) for v in k])
    if not keys:
        raise InputError(f"{root}: no complete image left (dropped {len(drop)}: {', '.join(incomplete)})")
    if pm is not None:
        clash = [
            c
            for c in pm.value_columns
            if _column(c, metadata_prefix) in {*RESERVED, *(_column(f, metadata_prefix) for f in key_fields)}
        ]
        if clash:
            raise InputError(
                f"platemap {pm.path}: column(s) {clash} clash with a manifest column or a pattern field; rename them"
            )
    opts = {"root": root.resolve(), "base": None if base is None else Path(base).resolve(), "objects": objects is not None,
            "metadata_prefix": metadata_prefix, "dataset": dataset or root.resolve().name}  # fmt: skip
    table = _rows(keys, found, channels, key_fields, plate_values, opts)
    dup_ids = table["image_id"][table["image_id"].duplicated()].tolist()
    if dup_ids:
        raise InputError(
            f"{root}: the key values join to the same image_id for {_listing(dup_ids)}; use field values without '_'"
        )
    skipped = dict(found.skipped)
    if found.unmatched:
        skipped["image files matching no pattern"] = len(found.unmatched)
    if orphans:
        skipped["label images without an image"] = len(orphans)
    dropped = {reason: len(ks) for reason, ks in incomplete.items() if ks}
    return ScanResult(table=table, channel_names=channels, n_files=n_files, skipped=skipped, dropped=dropped)


def _incomplete_problems(
    found: _Found, channels: list[str], incomplete: dict[str, set], orphans: list[str]
) -> list[ScanProblem]:
    problems = []
    if found.unmatched:
        problems.append(ScanProblem("unmatched", f"{len(found.unmatched)} image file(s) match no pattern: "
                                    f"{_listing(found.unmatched)}", tuple(found.unmatched)))  # fmt: skip
    keys = sorted(incomplete.get("missing a channel", ()), key=lambda k: [natural_key(v) for v in k])
    if keys:
        names = [
            f"{_key_text(k)} (no {', '.join(c for c in channels if c not in found.images[k])})" for k in keys
        ]
        problems.append(
            ScanProblem(
                "missing_channel", f"{len(keys)} image(s) missing a channel: {_listing(names)}", tuple(names)
            )
        )
    keys = sorted(incomplete.get("without a label image", ()), key=lambda k: [natural_key(v) for v in k])
    if keys:
        names = [_key_text(k) for k in keys]
        problems.append(
            ScanProblem(
                "missing_objects",
                f"{len(keys)} image(s) without a label image: {_listing(names)}",
                tuple(names),
            )
        )
    if orphans:
        problems.append(
            ScanProblem(
                "orphan_objects",
                f"{len(orphans)} label image(s) without an image: {_listing(orphans)}",
                tuple(orphans),
            )
        )
    return problems
