"""Registry of architectures and named model sizes.

An *architecture* is a model class with a ``config_class`` dataclass; a *model name* is an
architecture plus config values (``chada_vit_moyen`` = ChAda-ViT with D=192, depth 12, ...).
``create_model(name, **overrides)`` builds one; unknown override keys are an error, not ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["register_arch", "register_model", "create_model", "list_models", "get_arch", "model_spec"]

_ARCHS: dict[str, type[nn.Module]] = {}
_MODELS: dict[str, tuple[str, dict[str, Any], str]] = {}


def register_arch(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: the class needs a ``config_class`` dataclass and ``__init__(self, config)``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _ARCHS and _ARCHS[name] is not cls:
            raise ValueError(f"architecture {name!r} registered twice")
        cls.arch_name = name  # type: ignore[attr-defined]
        _ARCHS[name] = cls
        return cls

    return deco


def register_model(name: str, arch: str, description: str = "", **config: Any) -> None:
    """Register a named size of an architecture."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} registered twice")
    _MODELS[name] = (arch, dict(config), description)


def get_arch(arch: str) -> type[nn.Module]:
    try:
        return _ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(_ARCHS)}") from None


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_MODELS)


def model_spec(name: str) -> tuple[str, dict[str, Any], str]:
    """``(arch, config values, description)`` of a registered model name."""
    try:
        arch, cfg, desc = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
    return arch, dict(cfg), desc


def build_from_config(arch: str, config: dict[str, Any]) -> nn.Module:
    cls = get_arch(arch)
    cfg_cls = cls.config_class  # type: ignore[attr-defined]
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise TypeError(f"unknown config keys for {arch}: {unknown}; valid: {sorted(fields)}")
    return cls(cfg_cls(**config))


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model with random weights.

    Args:
        name: a name from :func:`list_models`, e.g. ``"chada_vit_moyen"``.
        **overrides: config fields to change, e.g. ``max_channels=5, attention="padded"``.
    """
    arch, cfg, _ = model_spec(name)
    cfg.update(overrides)
    model = build_from_config(arch, cfg)
    model.model_name = name  # type: ignore[attr-defined]
    return model
