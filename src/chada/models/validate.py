"""A model folder from elsewhere is input: check ``config.json`` and the weights before building anything.

:func:`validate_config` checks every config value against its dataclass field's type (an int is an
int, not ``1e9`` nor ``true``; a bool is a bool; a list holds what it should), its range (sizes,
depth and heads positive; rates in their intervals) and the architecture's own invariants
(``embed_dim`` divisible by ``num_heads``, ``patch_size`` dividing ``img_size``, no more channel names
than ``max_channels``), then estimates the memory the model needs (parameters at float32, once for
the model and once for the loaded weights, plus one image's activations at the training size,
:func:`chada.models.memory.forward_bytes`) and refuses a config beyond this machine's memory
(:func:`chada.models.memory.machine_memory`). The recorded ``extra`` values that change what a
command does (``image_size``, the channel lists) are checked too. :func:`check_dtypes` refuses any
tensor that is not floating point (int32 weights with the right names and shapes would load into the
float parameters silently, as garbage). Every error names ``config.json`` or ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

import torch

from chada.errors import InputError
from chada.models.memory import forward_bytes, gib, machine_memory

__all__ = ["validate_config", "validate_extra", "check_dtypes", "estimate_params"]

#: Fields that count something: a positive int.
POSITIVE_INTS = ("embed_dim", "depth", "num_heads", "patch_size", "img_size", "max_channels", "in_channels",
                 "mlp_hidden")  # fmt: skip
#: Fields that scale something: a positive finite number.
POSITIVE = ("mlp_ratio", "norm_eps", "block_norm_eps", "layer_scale")
#: Fields in [0, 1): a probability.
RATES = ("drop_path_rate",)


def _conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` (parsed JSON) is of the dataclass field type ``hint``."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return (
            isinstance(value, (list, tuple)) and all(_conforms(v, args[0]) for v in value) if args else True
        )
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_words(hint: Any) -> str:
    words = {int: "an integer", float: "a finite number", bool: "a bool (true / false)", str: "a string"}
    return words.get(hint) or "a " + (getattr(hint, "__name__", None) or str(hint).replace("typing.", ""))


def _check_types(cfg_cls: type, config: Mapping[str, Any], where: str) -> None:
    hints = typing.get_type_hints(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        if f.name in config and not _conforms(config[f.name], hints.get(f.name, Any)):
            raise InputError(
                f"{where}: {f.name} = {config[f.name]!r} is not {_type_words(hints[f.name])}; "
                "the file was edited or damaged: restore it or re-save the model"
            )


def _check_ranges(config: Mapping[str, Any], where: str) -> None:
    def bad(name: str, rule: str) -> InputError:
        return InputError(f"{where}: {name} = {config[name]!r} {rule}; the file was edited or damaged: "
                          "restore it or re-save the model")  # fmt: skip

    for name in POSITIVE_INTS:
        if config.get(name) is not None and config[name] < 1:
            raise bad(name, "must be a positive integer")
    for name in POSITIVE:
        if config.get(name) is not None and not config[name] > 0:
            raise bad(name, "must be > 0")
    for name in RATES:
        if config.get(name) is not None and not 0 <= config[name] < 1:
            raise bad(name, "must lie in [0, 1)")
    if config.get("pos_embed_std") is not None and config["pos_embed_std"] < 0:
        raise bad("pos_embed_std", "must be >= 0")
    if any(w < 1 for w in config.get("tokenizer_widths") or []):
        raise bad("tokenizer_widths", "must hold positive integers")
    D, heads = config.get("embed_dim"), config.get("num_heads")
    if D is not None and heads is not None and D % heads:
        raise bad("embed_dim", f"is not divisible by num_heads = {heads}")
    p, size = config.get("patch_size"), config.get("img_size")
    if p is not None and size is not None and size % p:
        raise bad("img_size", f"is not a multiple of patch_size = {p}")
    names, cmax = config.get("channel_names"), config.get("max_channels")
    if names is not None and cmax is not None and len(names) > cmax:
        raise bad("channel_names", f"lists {len(names)} names for max_channels = {cmax}")


def estimate_params(config: Mapping[str, Any]) -> int:
    """Parameter count of a ViT-like config (within a few percent for every registered architecture).

    Per block: qkv + projection ``4 D^2``, the MLP ``2 D Hd``, biases and norms; the embedding: the patch
    projection ``in_channels p^2 D``, the positional grid ``(N + 1) D``, the channel table
    ``max_channels D`` and the conv tokenizer's widths.
    """
    D = int(config.get("embed_dim", 192))
    hidden = config.get("mlp_hidden") or int(D * float(config.get("mlp_ratio", 4.0)))
    p, size = int(config.get("patch_size", 16)), int(config.get("img_size", 224))
    n_patches = (size // p) ** 2 if p <= size else 1
    widths = list(config.get("tokenizer_widths") or [])
    conv = sum(a * b * 9 for a, b in zip([1, *widths], widths)) + (widths[-1] * D if widths else 0)
    embed = (
        int(config.get("in_channels", 1)) * p * p * D
        + (n_patches + 1) * D
        + int(config.get("max_channels", 1)) * D
    )
    block = 4 * D * D + 2 * D * hidden + 9 * D + hidden
    return embed + conv + int(config.get("depth", 12)) * block + 2 * D


def _check_memory(config: Mapping[str, Any], where: str) -> None:
    n_params = estimate_params(config)
    D = int(config.get("embed_dim", 192))
    hidden = config.get("mlp_hidden") or int(D * float(config.get("mlp_ratio", 4.0)))
    p, size = int(config.get("patch_size", 16)), int(config.get("img_size", 224))
    tokens = 1 + int(config.get("max_channels", 1)) * max(1, (size // p) ** 2)
    # the built model and the loaded state dict are both in memory while the weights are copied in
    need = 2 * 4 * n_params + forward_bytes(tokens, D, hidden, int(config.get("num_heads", 1)))
    have = machine_memory()
    if need > have:
        raise InputError(
            f"{where}: this config describes a model of {n_params:.3g} parameters that needs about "
            f"{gib(need)} of memory (weights and one image's activations) while this machine has {gib(have)}; "
            "the file was edited or damaged: restore it or re-save the model"
        )


def validate_config(cfg_cls: type, config: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Refuse a config whose values do not fit ``cfg_cls``'s fields, ranges, invariants or this machine.

    Args:
        cfg_cls: the architecture's config dataclass.
        config: the ``config`` mapping of ``config.json`` (overrides applied).
        source: the ``config.json`` path, named in every error.

    Raises:
        InputError: the first bad value, naming ``source``, the field and the rule.
    """
    where = str(source)
    _check_types(cfg_cls, config, where)
    # a value config.json leaves out is the field's default: the invariants and the memory count it
    full = {f.name: f.default for f in dataclasses.fields(cfg_cls) if f.default is not dataclasses.MISSING}
    full.update(config)
    _check_ranges(full, where)
    _check_memory(full, where)


def validate_extra(extra: Any, source: str | os.PathLike) -> None:
    """Check the recorded values of ``extra`` that commands act on (``image_size``, channel lists)."""
    if extra is None:
        return
    if not isinstance(extra, Mapping):
        raise InputError(
            f"{source}: 'extra' is a {type(extra).__name__}, not a mapping; restore the file or re-save the model"
        )
    augment = (
        (extra.get("pretrain_config") or {}).get("augment")
        if isinstance(extra.get("pretrain_config"), Mapping)
        else None
    )
    sizes = {"extra.image_size": extra.get("image_size")}
    if isinstance(augment, Mapping):  # the older record of the training size (chada embed's fallback)
        sizes["extra.pretrain_config.augment.global_size"] = augment.get("global_size")
    for key, size in sizes.items():
        if size is not None and not (_conforms(size, int) and size > 0):
            raise InputError(
                f"{source}: {key} = {size!r} is not a positive integer (the size the model was trained at); "
                "restore the file, or remove the entry and pass --image-size"
            )
    for key in ("channel_vocab", "channel_names_seen"):
        value = extra.get(key)
        if value is not None and not _conforms(value, list[str]):
            raise InputError(
                f"{source}: extra.{key} = {value!r} is not a list of channel names; restore the file"
            )


def check_dtypes(state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Refuse weights that are not floating point, naming the first such tensor and how many there are."""
    bad = [
        f"{k} ({t.dtype})"
        for k, t in state.items()
        if isinstance(t, torch.Tensor) and not t.is_floating_point()
    ]
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise InputError(
            f"{source}: tensor {bad[0]}{more} is not floating point; model weights are float tensors: the file "
            "was written by another tool or damaged: re-save the model"
        )
