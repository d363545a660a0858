"""Which config changes a resumed DINO run accepts: the rules live with the config, not the loop.

A resumed run must give the weights an uninterrupted run gives, so it refuses a config whose values
change the result, unless each changed key is allowed by name (``--resume-allow-changes``). The keys
in :data:`SAFE_TO_CHANGE_ON_RESUME` do not change the trained weights beyond float round-off and may
differ silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chada.ssl.config import PretrainConfig, config_from_dict, config_to_dict

__all__ = [
    "SAFE_TO_CHANGE_ON_RESUME",
    "SAFE_FOR_MANIFEST_ONLY",
    "flatten",
    "config_changes",
    "check_resume_config",
]

log = logging.getLogger(__name__)

# Config keys that do not change the trained weights beyond float round-off: a resumed run may differ
# in them silently. Everything else must match the checkpoint's config, or be allowed by name.
SAFE_TO_CHANGE_ON_RESUME = frozenset({
    "run.output_dir", "run.max_steps", "run.save_every_steps", "run.log_every_steps", "run.tensorboard",
    "run.progress", "run.export_student", "run.export_init", "run.threads", "run.find_unused_parameters",
    "data.pin_memory", "data.cache",
})  # fmt: skip
# Safe only for map-style (manifest) data, whose augmentations are seeded per sample; with shards the
# split of shards across workers is part of the order.
SAFE_FOR_MANIFEST_ONLY = frozenset({"data.num_workers"})


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (the dotted keys of overrides and of ``--resume-allow-changes``)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_changes(saved: dict[str, Any], cfg: PretrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (checkpoint value, new value)}`` for every key that differs and may change the
    result (keys in :data:`SAFE_TO_CHANGE_ON_RESUME` are left out)."""
    old = flatten(config_to_dict(config_from_dict(saved)))
    new = flatten(config_to_dict(cfg))
    safe = set(SAFE_TO_CHANGE_ON_RESUME)
    if cfg.data.shards is None:
        safe |= SAFE_FOR_MANIFEST_ONLY
    return {
        k: (old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if k not in safe and old.get(k) != new.get(k)
    }


def check_resume_config(
    path: Path,
    state: dict[str, Any],
    cfg: PretrainConfig,
    world_size: int,
    allow: Sequence[str],
    announce: bool,
) -> None:
    """Refuse to resume ``path`` with a config that changes the result, unless each changed key is allowed.

    ``world_size`` counts as a key (``"world_size"``). ``announce``: log the allowed changes (rank 0).
    """
    try:
        changes = config_changes(state["config"], cfg)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{path}: its recorded config cannot be read ({exc}); delete it to start over"
        ) from None
    if state.get("world_size") != world_size:
        changes["world_size"] = (state.get("world_size"), world_size)
    allowed = set(allow)
    unknown = allowed - set(changes) - set(flatten(config_to_dict(cfg))) - {"world_size"}
    if unknown:
        raise ValueError(f"--resume-allow-changes: unknown key(s) {sorted(unknown)}")
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in refused.items()))
        raise ValueError(
            f"cannot resume {path}: the config differs from the checkpoint's in values that change the "
            f"result ({listed}). Restore them, or allow the change with --resume-allow-changes "
            f"{','.join(refused)}, or choose another run.output_dir"
        )
    if changes and announce:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
        log.warning("resuming %s with allowed config changes: %s", path, listed)
