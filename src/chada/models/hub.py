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
from chada.models.registry import build_from_config, create_model, get_arch, list_models
from chada.models.validate import check_dtypes, validate_config, validate_extra

__all__ = ["save_pretrained", "load_model", "check_finite", "PretrainedMixin"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
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
    """``config.json`` of a model folder, checked to hold ``arch`` and ``config``."""
    path = Path(directory) / CONFIG_NAME
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: not a saved chada model folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-save the model or restore the file") from None
    if not isinstance(meta, dict) or "arch" not in meta or not isinstance(meta.get("config"), dict):
        raise ValueError(
            f"{path} has no 'arch' and 'config' entries: it was not written by chada's save_pretrained "
            f"(for the authors' checkpoint, run `chada convert CKPT OUT_DIR`)"
        )
    return meta


def check_finite(state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Refuse weights holding NaN or inf, naming the first bad tensor (every one is checked)."""
    bad = []
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            bad.append(f"{name} ({n} of {t.numel()} values)")
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise ValueError(
            f"{source}: NaN or inf weights in {bad[0]}{more}; the checkpoint is damaged or its training "
            f"diverged: use an earlier checkpoint"
        )


def _read_weights(weights: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} not found: the model folder has no weights; re-save or copy it again"
        )
    try:
        return load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ValueError(
            f"{weights} is not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
            f"it is truncated or corrupt; re-save the model or copy the file again"
        ) from None


def load_model(
    name_or_dir: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides: Any
) -> nn.Module:
    """Load a model saved with ``save_pretrained``, or build a registered name with random weights.

    Loading is strict: every config value is checked before anything is built (type, range, the
    model's invariants, the memory it needs: :mod:`chada.models.validate`); a missing or unexpected
    tensor, a tensor of the wrong shape or of a non-float dtype and any NaN/inf weight are errors
    naming the tensors; a damaged folder (no ``arch`` in config.json, unknown
    architecture, bad config values, truncated or corrupt model.safetensors) is one ValueError naming
    the file. ``overrides`` may change run-time options such as ``attention``.
    """
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
    where = path / CONFIG_NAME
    try:
        cfg_cls = get_arch(meta["arch"]).config_class  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{where}: {exc}. The folder was written by another chada version or edited"
        ) from None
    # every value, the invariants and the memory the model needs, before anything is allocated
    validate_config(cfg_cls, config, where)
    validate_extra(meta.get("extra"), where)
    try:
        model = build_from_config(meta["arch"], config)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{path / CONFIG_NAME}: {exc}. The folder was written by another chada version or edited; "
            f"re-save it with this version"
        ) from None
    model.model_name = meta.get("model_name")  # type: ignore[attr-defined]
    weights = path / WEIGHTS_NAME
    state = _read_weights(weights, map_location)
    check_dtypes(state, weights)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights in {weights} do not match {meta['arch']} as configured in {CONFIG_NAME}: "
            f"missing={missing} unexpected={unexpected}"
        )
    wrong = [
        f"{k} {tuple(v.shape)} (config wants {tuple(expected[k].shape)})"
        for k, v in state.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise ValueError(
            f"weights in {weights} do not fit the config in {CONFIG_NAME}: "
            + "; ".join(wrong[:5])
            + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else "")
            + ". config.json and model.safetensors come from different models"
        )
    check_finite(state, weights)
    model.load_state_dict(state, strict=True)
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
