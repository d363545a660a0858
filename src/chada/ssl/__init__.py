"""Self-supervised pretraining (DINO) of any registered backbone on heterogeneous-channel corpora.

from chada.ssl import pretrain, load_config
out = pretrain("configs/quickstart.yaml", overrides=["optim.epochs=5"])   # -> run folder
model = chada.load_model(out / "teacher")
"""

from chada.ssl.config import PretrainConfig, apply_overrides, config_from_dict, load_config
from chada.ssl.dino import DINOHead, DINOLoss, MultiCropWrapper, collapse_kind
from chada.ssl.schedules import CosineSchedule, LinearWarmupConstant, cosine_value
from chada.ssl.trainer import Trainer, pretrain

__all__ = [
    "CosineSchedule",
    "DINOHead",
    "DINOLoss",
    "LinearWarmupConstant",
    "MultiCropWrapper",
    "PretrainConfig",
    "Trainer",
    "apply_overrides",
    "collapse_kind",
    "config_from_dict",
    "cosine_value",
    "load_config",
    "pretrain",
]
