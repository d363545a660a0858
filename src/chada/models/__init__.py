"""Models: ChAda-ViT and the baselines, with a registry of named sizes."""

# imported for their registrations: the baseline architectures and their named sizes
from chada.models import fixed_channel_vit as _fixed  # noqa: F401
from chada.models import inter_channel_vit as _inter  # noqa: F401
from chada.models import one_channel_vit as _one  # noqa: F401
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
