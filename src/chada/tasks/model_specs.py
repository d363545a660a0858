"""The ``models:`` section of the evaluation tasks that run encoders on images (reconstruction, dense).

Each entry is ``name: REF`` or ``name: {model: REF, family, arch, seed}`` (``path`` is an alias of
``model``), or a list of such mappings with a ``name`` key. ``REF`` is a saved-model folder (relative
to the config's folder), a registered model name (random weights from ``seed``: the untrained
baseline), ``handmade`` where the task accepts hand-made features, or an ``nn.Module`` (Python API).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chada.config_reader import check_keys, choice, integer
from chada.eval.config import FAMILIES

__all__ = ["MODEL_KEYS", "TaskModelSpec", "parse_task_models", "resolve_model_ref"]

MODEL_KEYS = frozenset({"model", "path", "name", "family", "arch", "seed"})


@dataclass
class TaskModelSpec:
    """One encoder of a task: ``model`` is a folder path, a registered name, ``"handmade"`` or an
    ``nn.Module``; ``seed`` seeds the random weights of a registered name."""

    name: str
    model: Any
    family: str | None = None
    arch: str | None = None
    seed: int = 0


def resolve_model_ref(ref: Any, base: Path, handmade: bool) -> Any:
    """A folder relative to ``base`` (the config's folder) becomes absolute; a registered model name
    stays a name unless such a folder exists; modules pass through. A missing folder is returned as
    its full path, so loading it fails later naming that path."""
    import torch.nn as nn

    if isinstance(ref, nn.Module):
        return ref
    if not isinstance(ref, (str, os.PathLike)):
        raise ValueError(
            f"model must be a saved-model folder, a registered model name or an nn.Module, got {ref!r}"
        )
    if str(ref) == "handmade":
        if handmade:
            return "handmade"
        raise ValueError("hand-made features are not an encoder a decoder can be put on; use a model")
    from chada.models.registry import list_models

    p = Path(os.path.expanduser(str(ref)))
    full = p if p.is_absolute() else base / p
    if full.exists() or str(ref) not in list_models():
        return str(full)
    return str(ref)


def parse_task_models(
    task: str, label: str, raw: Any, base: Path, handmade: bool, expected: str
) -> dict[str, TaskModelSpec]:
    """``{name: TaskModelSpec}`` from a task's ``models:`` value.

    Args:
        task: the task kind for messages (``"dense"``, ``"reconstruction"``).
        label: the task's name for messages.
        raw: the YAML value (mapping, or list of mappings with ``name``).
        base: the config's folder (relative model folders are resolved against it).
        handmade: whether ``handmade`` is an accepted model.
        expected: what a model may be, for the "models is required" message.
    """
    if isinstance(raw, list) and all(isinstance(m, dict) and "name" in m for m in raw):
        raw = {m["name"]: m for m in raw}
    if not raw or not isinstance(raw, dict):
        raise ValueError(f"{task}.{label}.models: required (name -> {expected})")
    out: dict[str, TaskModelSpec] = {}
    for name, m in raw.items():
        where = f"{task}.{label}.models.{name}"
        m = m if isinstance(m, dict) else {"model": m}
        check_keys(m, sorted(MODEL_KEYS), where)
        ref = m.get("model", m.get("path"))
        if ref is None:
            raise ValueError(f"{where}: 'model' is required")
        fam = m.get("family")
        if fam is not None:
            choice(fam, f"{where}.family", FAMILIES)
        out[str(name)] = TaskModelSpec(
            str(name),
            resolve_model_ref(ref, base, handmade),
            fam,
            m.get("arch"),
            integer(m.get("seed", 0), f"{where}.seed", 0),
        )
    return out
