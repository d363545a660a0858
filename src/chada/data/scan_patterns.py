"""Filename patterns of ``chada data scan`` (:mod:`chada.data.scan`): matching, channel names, the walk.

A pattern is the ``parse`` library's syntax (``{well}_s{site}_w{channel}.tif``), where an untyped
field never spans a ``/``, or a regular expression with named groups; either is matched against a
file's path relative to the scanned folder, whole.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from chada.errors import InputError

__all__ = ["Matcher", "channel_name", "natural_key", "parse_channel_names", "walk_files"]

_FIELD_RE = re.compile(r"(?<!\{)\{([A-Za-z_]\w*)?\}(?!\})")
_SEG = "chadaseg"


def natural_key(text: str) -> list[Any]:
    """``"s10"`` after ``"s2"``: digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", str(text)) if t]


class Matcher:
    """A compiled filename pattern: ``match(rel_path)`` -> ``{field: value}`` or ``None``."""

    def __init__(self, pattern: str, regex: bool = False, what: str = "--pattern") -> None:
        self.pattern, self.regex, self.what = pattern, regex, what
        if regex:
            try:
                self._re = re.compile(pattern)
            except re.error as exc:
                raise InputError(f"{what} {pattern!r}: not a valid regular expression ({exc})") from exc
            self.fields = list(self._re.groupindex)
        else:
            import parse

            # An untyped field must not span folders, so "{well}_s{site}..." cannot eat "PLATE/".
            seg = parse.with_pattern(r"[^/]+")(lambda s: s)
            text = _FIELD_RE.sub(lambda m: "{" + (m.group(1) or "") + ":" + _SEG + "}", pattern)
            try:
                self._parser = parse.compile(text, extra_types={_SEG: seg})
            except (ValueError, KeyError, parse.RepeatedNameError) as exc:
                raise InputError(f"{what} {pattern!r}: not a valid pattern ({exc})") from exc
            self.fields = list(self._parser.named_fields)
        if not self.fields:
            raise InputError(
                f"{what} {pattern!r} has no named field; write e.g. '{{well}}_s{{site}}_w{{channel}}.tif'"
            )

    def match(self, rel: str) -> dict[str, str] | None:
        if self.regex:
            m = self._re.fullmatch(rel)
            return None if m is None else {k: ("" if v is None else str(v)) for k, v in m.groupdict().items()}
        r = self._parser.parse(rel)
        return None if r is None else {k: str(v) for k, v in r.named.items()}


def parse_channel_names(text: str | None) -> list[tuple[str, str]]:
    """``"w1=DAPI,w2=Tubulin"`` -> ``[("w1", "DAPI"), ("w2", "Tubulin")]`` (in channel order)."""
    if text is None or not str(text).strip():
        return []
    pairs = []
    for part in str(text).split(","):
        key, sep, name = part.partition("=")
        if not sep or not key.strip() or not name.strip():
            raise InputError(
                f"--channel-names takes VALUE=NAME pairs separated by commas, got {part.strip()!r}"
            )
        pairs.append((key.strip(), name.strip()))
    keys = [k.lower() for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise InputError(f"--channel-names names a channel value twice: {text!r}")
    from chada.data.channel_names import validate_channel_names

    validate_channel_names([n for _, n in pairs], "--channel-names")
    return pairs


def walk_files(root: Path) -> list[str]:
    """Every file below ``root`` as a ``/`` path relative to it, sorted; hidden entries skipped.

    An ``.zarr`` folder is one image, not a folder to descend into.
    """
    out: list[str] = []
    for here, dirs, files in os.walk(root):
        rel_here = Path(here).relative_to(root)
        keep = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if d.lower().endswith(".zarr"):
                out.append((rel_here / d).as_posix())
            else:
                keep.append(d)
        dirs[:] = keep
        out += [(rel_here / f).as_posix() for f in files if not f.startswith(".")]
    return sorted(out, key=natural_key)


def channel_name(value: str, pairs: list[tuple[str, str]]) -> list[str]:
    """The names ``pairs`` gives ``value``: a key equal to it, or (when none is) equal to letters + it."""
    exact = [n for k, n in pairs if k.lower() == value.lower()]
    return exact or [n for k, n in pairs if re.fullmatch(r"[A-Za-z]+" + re.escape(value), k, flags=re.I)]
