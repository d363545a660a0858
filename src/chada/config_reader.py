"""One reader for every YAML config of chada: typed values, unknown keys, one error format.

Used by the pretraining config (:mod:`chada.ssl.config`, nested dataclasses), the evaluation config
(:mod:`chada.eval.config`) and the task sections (:mod:`chada.tasks.dense.config`,
:mod:`chada.tasks.reconstruction.config`, :mod:`chada.tasks.model_specs`). Every error names the
dotted key and says what was expected::

    optim.lr: expected a number, got 'abc'
    dense.nuclei.tile: expected an integer >= 1, got 0
    optim.lrr: unknown key (did you mean 'lr'?); valid keys: lr, min_lr, ...

and a reader that knows the file prefixes it (:func:`in_file`): ``config.yaml: optim.lr: ...``.
The errors are ``ValueError`` (a bad value) or ``TypeError`` (a value of the wrong type in a
dataclass field); the command line turns both into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "expected",
    "unknown_key_error",
    "check_keys",
    "integer",
    "at_least",
    "number",
    "choice",
    "coerce",
    "fill",
    "in_file",
]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def expected(where: str, what: str, value: Any, kind: type[Exception] = ValueError) -> Exception:
    """``{where}: expected {what}, got {value!r}``: the one type/range error of every config."""
    return kind(f"{where}: expected {what}, got {value!r}")


def unknown_key_error(key: str, valid: Iterable[str], where: str = "") -> ValueError:
    """``{where}.{key}: unknown key (did you mean ...?); valid keys: ...`` (``where`` may end with a dot)."""
    valid = list(valid)
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(
        f"{_join(where.rstrip('.'), str(key))}: unknown key{hint}; valid keys: {', '.join(valid)}"
    )


def check_keys(values: dict[str, Any], valid: Iterable[str], where: str = "") -> None:
    """Raise :func:`unknown_key_error` for the first key of ``values`` not in ``valid`` (in file order)."""
    valid = list(valid)
    for key in values:
        if key not in valid:
            raise unknown_key_error(str(key), valid, where)


def _float(value: Any, where: str, what: str) -> float:
    """``value`` as a float for :func:`integer` and :func:`number`: never a bool or None."""
    if isinstance(value, bool) or value is None:
        raise expected(where, what, value)
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise expected(where, what, value) from None
    return f


def integer(value: Any, where: str, low: int | None = None) -> int:
    """An integer (``3``, ``3.0``, ``"3"``, ``"1e3"``), at least ``low`` if given; never a bool."""
    what = "an integer" if low is None else f"an integer >= {low}"
    f = _float(value, where, what)
    if not f.is_integer() or (low is not None and f < low):
        raise expected(where, what, value)
    return int(f)


def at_least(low: int) -> Callable[[str], int]:
    """argparse ``type=`` of an integer flag: :func:`integer` ``>= low``, refused while the command line
    is parsed, so argparse's one-line error names the flag (``argument --batch-size: expected an
    integer >= 1, got '0'``) instead of a setting's inner name, and before any work starts."""

    def parse(text: str) -> int:
        try:
            return integer(text, "", low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None

    parse.__name__ = f"integer >= {low}"
    return parse


def number(value: Any, where: str, low: float | None = None, *, strict_low: bool = False) -> float:
    """A float (``0.1``, ``"1e-3"``), ``> low`` with ``strict_low`` else ``>= low`` if given; never a bool."""
    what = "a number" if low is None else f"a number {'>' if strict_low else '>='} {low:g}"
    f = _float(value, where, what)
    if low is not None and (f != f or (f <= low if strict_low else f < low)):  # NaN passes every comparison
        raise expected(where, what, value)
    return f


def choice(value: Any, where: str, allowed: Iterable[str]) -> Any:
    """One of ``allowed``, exactly; the error suggests the closest one."""
    allowed = tuple(allowed)
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{expected(where, 'one of ' + ', '.join(map(repr, allowed)), value)}{hint}")
    return value


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) < len(typing.get_args(tp))
    return tp, False


def _scalar(value: Any, inner: Any, where: str) -> Any:
    """``value`` as ``bool`` / ``int`` / ``float`` / ``str``; TypeError in the one format otherwise."""
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise expected(where, "true/false", value, TypeError)
    if inner is int:
        try:
            return integer(value, where)
        except ValueError as exc:
            raise TypeError(str(exc)) from None
    if inner is float:
        try:
            return number(value, where)
        except ValueError as exc:
            raise TypeError(str(exc)) from None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise expected(where, "a string", value, TypeError)


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type (str numbers, lists -> tuples); raise TypeError otherwise."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise expected(where, "a value", None, TypeError)
    if inner is Any:
        return value
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):  # e.g. list[str] | str: accept any member that fits
        for member in typing.get_args(inner):
            try:
                return coerce(value, member, where)
            except TypeError:
                continue
        raise expected(where, f"a value of type {inner}", value, TypeError)
    if inner in (bool, int, float, str):
        return _scalar(value, inner, where)
    if origin is tuple:
        args = typing.get_args(inner)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise expected(where, f"a list of {len(args)} values", value, TypeError)
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(inner) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise expected(where, "a list", value, TypeError)
        return [coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise expected(where, "a mapping", value, TypeError)
        return dict(value)
    return value


def fill(obj: Any, values: dict[str, Any], prefix: str) -> None:
    """Set a dataclass tree from nested dicts (``prefix``: the dotted path of ``obj``, ending with a dot)."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if not isinstance(values, dict):
        raise expected(prefix.rstrip(".") or "<root>", "a mapping", values, TypeError)
    check_keys(values, names, prefix)
    for key, value in values.items():
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            fill(current, value, f"{prefix}{key}.")
        else:
            setattr(obj, key, coerce(value, hints[key], f"{prefix}{key}"))


def in_file(path: str | os.PathLike, exc: Exception) -> Exception:
    """``exc`` with the file named first (``config.yaml: optim.lr: ...``), of the same type when that type
    takes one message (ValueError, TypeError), else a ValueError."""
    kind = type(exc) if type(exc) in (ValueError, TypeError) else ValueError
    return kind(f"{path}: {exc}")
