"""Typed nested dataclasses from YAML values: type coercion and unknown-key errors with a hint.

The generic half of :mod:`chada.ssl.config` (which holds the DINO fields and their validation):
``fill(obj, values)`` sets a dataclass tree from nested dicts, coercing each value to its field's
annotation (``"1e-3"`` -> float, lists -> tuples) and naming the closest valid key on a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

__all__ = ["coerce", "fill", "unknown_key_error"]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) < len(typing.get_args(tp))
    return tp, False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type (str numbers, lists -> tuples); raise TypeError otherwise."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise TypeError(f"{where} may not be null")
    if inner is Any:
        return value
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):  # e.g. list[str] | str: accept any member that fits
        for member in typing.get_args(inner):
            try:
                return coerce(value, member, where)
            except TypeError:
                continue
        raise TypeError(f"{where}: {value!r} does not fit {inner}")
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise TypeError(f"{where}: expected true/false, got {value!r}")
    if inner is int:
        if isinstance(value, bool):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise TypeError(f"{where}: expected an integer, got {value!r}") from None
            if f.is_integer():
                return int(f)
        raise TypeError(f"{where}: expected an integer, got {value!r}")
    if inner is float:
        if isinstance(value, bool):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise TypeError(f"{where}: expected a number, got {value!r}") from None
        raise TypeError(f"{where}: expected a number, got {value!r}")
    if inner is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(f"{where}: expected a string, got {value!r}")
    if origin is tuple:
        args = typing.get_args(inner)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TypeError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(inner) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def unknown_key_error(key: str, valid: list[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown config key {where}{key!r}{hint}; valid keys: {', '.join(valid)}")


def fill(obj: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if not isinstance(values, dict):
        raise TypeError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping, got {values!r}")
    for key, value in values.items():
        if key not in names:
            raise unknown_key_error(str(key), names, prefix)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            fill(current, value, f"{prefix}{key}.")
        else:
            setattr(obj, key, coerce(value, hints[key], f"{prefix}{key}"))
