"""ChAda-ViT: Channel-Adaptive Vision Transformer for heterogeneous microscopy images.

Public entry points::

    import chada
    model = chada.create_model("chada_vit_moyen")
    emb = model([img_a, img_b])          # list of [C_i, H, W] float tensors -> [B, D]
    model.save_pretrained("my_model")
    model = chada.load_model("my_model")
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The models API is imported on first use (PEP 562): ``chada --help`` and every ``chada.cli`` import
# go through this package, and must not pay for importing torch.
_MODELS_API = ("ChannelBatch", "create_model", "list_models", "load_model")

if TYPE_CHECKING:
    from chada.models import ChannelBatch, create_model, list_models, load_model


def __getattr__(name: str) -> Any:
    if name in _MODELS_API:
        import chada.models

        value = getattr(chada.models, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chada' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODELS_API))


__all__ = ["ChannelBatch", "create_model", "list_models", "load_model", "__version__"]
