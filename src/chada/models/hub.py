"""Saving and loading models as ``model.safetensors`` + ``config.json`` (no network, ever)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chada.io import atomic_write_bytes
from chada.models.registry import build_from_config, create_model, list_models

__all__ = ["save_pretrained", "load_model", "PretrainedMixin"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_pretrained(model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for a registered-architecture model."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(model.config)  # type: ignore[attr-defined]
    meta = {
        "arch": model.arch_name,  # type: ignore[attr-defined]
        "model_name": getattr(model, "model_name", None),
        "config": config,
        "format": "chada/1",
    }
    if extra:
        meta["extra"] = extra
    # Tied/shared tensors are not allowed by safetensors; clone to contiguous independent storage.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: not a saved chada model folder") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def load_model(name_or_dir: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """Load a model saved with ``save_pretrained``, or build a registered name with random weights.

    Loading is strict: a missing or unexpected tensor is an error naming the keys.
    ``overrides`` may change run-time options such as ``attention``.
    """
    from safetensors.torch import load_file

    path = Path(name_or_dir)
    if not path.exists():
        if str(name_or_dir) in list_models():
            return create_model(str(name_or_dir), **overrides)
        raise FileNotFoundError(
            f"{name_or_dir!r} is neither a saved model folder nor a registered model name "
            f"({', '.join(list_models())})"
        )
    if path.is_file():
        raise ValueError(f"{path} is a file; pass the folder holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    meta = read_config(path)
    config = dict(meta["config"])
    config.update(overrides)
    model = build_from_config(meta["arch"], config)
    model.model_name = meta.get("model_name")  # type: ignore[attr-defined]
    weights = path / WEIGHTS_NAME
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found")
    state = load_file(str(weights), device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights in {weights} do not match {meta['arch']}: missing={missing} unexpected={unexpected}")
    model.pretrained_extra = meta.get("extra", {})  # type: ignore[attr-defined]
    return model.eval()


class PretrainedMixin:
    """Adds ``save_pretrained`` / ``from_pretrained`` to a registered model class."""

    def save_pretrained(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        return save_pretrained(self, directory, extra)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> nn.Module:
        return load_model(directory, **overrides)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)  # type: ignore[attr-defined]
