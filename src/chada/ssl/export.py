"""What a DINO run writes at its end: ``teacher/`` (and ``student/``, ``init/``) with ``save_pretrained``,
with the metadata that ``chada embed`` and the channel checks read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from chada.models.hub import save_pretrained
from chada.ssl.config import PretrainConfig, config_to_dict

__all__ = ["export_extra", "export_backbones"]


def export_extra(
    cfg: PretrainConfig,
    channel_counts: dict[str, int],
    channel_vocab: list[str] | None,
    pool: str | None,
    step: int,
) -> dict[str, Any]:
    """The ``extra`` block of an exported model's ``config.json`` (``weights`` is added per folder)."""
    return {
        "ssl": "dino",
        "channel_names_seen": list(channel_counts),
        "channel_image_counts": dict(channel_counts),
        "channel_vocab": channel_vocab,
        # how names reached channel-embedding slots during training: through channel_vocab, or by
        # position in each image (the paper's rule; then channel_names_seen has no slot order)
        "channel_slots": "vocabulary" if channel_vocab is not None else "position",
        "dino_pool": pool,
        # the size of the global views the teacher saw: `chada embed` embeds at it by default
        "image_size": cfg.augment.global_size,
        "global_step": step,
        "epochs": cfg.optim.epochs,
        "pretrain_config": config_to_dict(cfg),
    }


def export_backbones(out_dir: Path, backbones: dict[str, nn.Module], extra: dict[str, Any]) -> Path:
    """``save_pretrained(backbone, out_dir / name)`` for each ``name -> backbone``; the first folder."""
    paths = [
        save_pretrained(b, out_dir / name, extra={**extra, "weights": name}) for name, b in backbones.items()
    ]
    return paths[0]
