"""Models: ChAda-ViT and the baselines, with a registry of named sizes."""

from chada.models import baselines as _baselines  # noqa: F401  (registers the baseline architectures)
from chada.models.batch import ChannelBatch, as_channel_batch
from chada.models.chada_vit import ChAdaOutput, ChAdaViT, ChAdaViTConfig
from chada.models.hub import load_model, save_pretrained
from chada.models.registry import create_model, list_models, model_spec, register_arch, register_model

__all__ = [
    "ChannelBatch",
    "as_channel_batch",
    "ChAdaOutput",
    "ChAdaViT",
    "ChAdaViTConfig",
    "create_model",
    "list_models",
    "load_model",
    "model_spec",
    "register_arch",
    "register_model",
    "save_pretrained",
]
