"""ChAda-ViT: Channel-Adaptive Vision Transformer for heterogeneous microscopy images.

Public entry points::

    import chada
    model = chada.create_model("chada_vit_moyen")
    emb = model([img_a, img_b])          # list of [C_i, H, W] float tensors -> [B, D]
    model.save_pretrained("my_model")
    model = chada.load_model("my_model")
"""

from chada.models import ChannelBatch, create_model, list_models, load_model

__version__ = "0.1.0"

__all__ = ["ChannelBatch", "create_model", "list_models", "load_model", "__version__"]
