"""Convert the authors' released ChAda-ViT weights (Bourriez et al.) to this project's layout.

The authors publish a PyTorch Lightning checkpoint whose ``state_dict`` holds the DINO student under
``backbone.`` and the teacher under ``momentum_backbone.`` (plus projection heads and optimiser state).
Their own loading code uses ``strict=False`` and so silently drops any key that does not match; here
every backbone key must map onto exactly one of ours and every one of ours must be filled, or the
conversion fails naming the keys.

Key map (authors' name -> ours; ``D`` = 192, ``C_max`` = 10, ``N`` = 196)::

    token_learner.proj.{weight,bias}            -> patch_embed.proj.{weight,bias}
    cls_token              [1, 1, D]            -> cls_token     [1, 1, D]
    pos_embed              [1, 1, 1 + N, D]     -> pos_embed     [1, 1 + N, D]
    channel_token          [1, C_max, 1, D]     -> channel_embed [C_max, D]
    blocks.i.self_attn.in_proj_{weight,bias}    -> blocks.i.attn.qkv.{weight,bias}   (same q,k,v stacking)
    blocks.i.self_attn.out_proj.{weight,bias}   -> blocks.i.attn.proj.{weight,bias}
    blocks.i.linear1 / linear2                  -> blocks.i.mlp.fc1 / fc2
    blocks.i.norm1 / norm2, norm                -> same names

The number of attention heads is not stored in the weights (``in_proj`` is ``[3D, D]`` for any head
count); it comes from the model name / ``overrides`` (see ``docs/official-weights.md``).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from chada.models.hub import check_finite
from chada.models.registry import create_model

__all__ = [
    "OFFICIAL_MODEL_NAME",
    "ConversionReport",
    "convert_official_state_dict",
    "select_official_backbone",
    "read_checkpoint",
    "load_official_checkpoint",
]

OFFICIAL_MODEL_NAME = "chada_vit_moyen_official"

# Prefixes of the two DINO backbones inside a Lightning checkpoint. ``encoder.`` is the student's name
# in older checkpoints of the authors (their notebook renames it to ``backbone.``).
_PREFIXES = {"student": ("backbone.", "encoder."), "teacher": ("momentum_backbone.",)}
_ANCHOR = "token_learner.proj.weight"  # present in every official backbone; locates its prefix

_BLOCK_MAP = {
    "self_attn.in_proj_weight": "attn.qkv.weight",
    "self_attn.in_proj_bias": "attn.qkv.bias",
    "self_attn.out_proj.weight": "attn.proj.weight",
    "self_attn.out_proj.bias": "attn.proj.bias",
    "linear1.weight": "mlp.fc1.weight",
    "linear1.bias": "mlp.fc1.bias",
    "linear2.weight": "mlp.fc2.weight",
    "linear2.bias": "mlp.fc2.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
}
_TOP_MAP = {
    "token_learner.proj.weight": "patch_embed.proj.weight",
    "token_learner.proj.bias": "patch_embed.proj.bias",
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "channel_token": "channel_embed",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class ConversionReport(dict):
    """What a conversion did: ``prefix``, ``which``, ``mapped`` (official -> ours), ``ignored`` (count of
    non-backbone keys, by top-level name), ``source`` (file path or None)."""


def _map_key(key: str) -> str | None:
    if key in _TOP_MAP:
        return _TOP_MAP[key]
    m = _BLOCK_RE.match(key)
    if m and m.group(2) in _BLOCK_MAP:
        return f"blocks.{m.group(1)}.{_BLOCK_MAP[m.group(2)]}"
    return None


def _official_name(ours: str) -> str:
    """Our parameter name -> the authors' (for error messages about missing tensors)."""
    inverse_top = {v: k for k, v in _TOP_MAP.items()}
    if ours in inverse_top:
        return inverse_top[ours]
    m = _BLOCK_RE.match(ours)
    if m:
        inverse_block = {v: k for k, v in _BLOCK_MAP.items()}
        if m.group(2) in inverse_block:
            return f"blocks.{m.group(1)}.{inverse_block[m.group(2)]}"
    return ours


def _reshape(ours: str, value: Tensor) -> Tensor:
    """Official tensor -> our shape for the three embeddings whose layout differs."""
    if ours == "pos_embed":
        if value.ndim != 4 or value.shape[0] != 1 or value.shape[1] != 1:
            raise ValueError(f"official pos_embed must be [1, 1, 1+N, D], got {tuple(value.shape)}")
        return value[:, 0]
    if ours == "channel_embed":
        if value.ndim != 4 or value.shape[0] != 1 or value.shape[2] != 1:
            raise ValueError(f"official channel_token must be [1, C_max, 1, D], got {tuple(value.shape)}")
        return value[0, :, 0]
    return value


def _unwrap(obj: Any) -> Mapping[str, Tensor]:
    """A Lightning checkpoint (dict with ``state_dict``) or a bare state dict -> the tensor mapping."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict or a Lightning checkpoint dict, got {type(obj).__name__}")
    return obj


def select_official_backbone(
    state_dict: Mapping[str, Any], which: str = "student"
) -> tuple[dict[str, Tensor], str]:
    """Pick one backbone's tensors out of a checkpoint and strip its prefix.

    Args:
        state_dict: a Lightning checkpoint dict, its ``state_dict``, or a bare backbone state dict
            (with or without the ``backbone.`` / ``momentum_backbone.`` prefix).
        which: ``"student"`` (``backbone.``, what the authors' evaluation code loads) or ``"teacher"``
            (``momentum_backbone.``).

    Returns:
        ``(tensors without prefix, prefix used)``; keys outside the chosen prefix are dropped (DINO
        projection heads, online classifiers, the other backbone).

    Raises:
        ValueError: unknown ``which``, or the requested backbone is not in the checkpoint.
    """
    if which not in _PREFIXES:
        raise ValueError(f"which must be 'student' or 'teacher', got {which!r}")
    sd = _unwrap(state_dict)
    prefixes = sorted({k[: -len(_ANCHOR)] for k in sd if isinstance(k, str) and k.endswith(_ANCHOR)})
    if not prefixes:
        raise ValueError(
            f"no ChAda-ViT backbone found: no key ends with {_ANCHOR!r} "
            f"(first keys: {sorted(map(str, sd))[:8]}); is this the authors' checkpoint?"
        )
    known = [p for p in prefixes if p in _PREFIXES[which]]
    other = "teacher" if which == "student" else "student"
    if known:
        prefix = known[0]
    elif any(p in _PREFIXES[other] for p in prefixes):
        raise ValueError(
            f"the checkpoint has no {which} backbone (looked for prefixes {list(_PREFIXES[which])}); "
            f"backbone prefixes present: {prefixes}; use --{other} / which={other!r}"
        )
    elif len(prefixes) == 1:
        prefix = prefixes[0]  # a bare backbone, or one saved under another wrapper name
    else:
        raise ValueError(
            f"several backbones in the checkpoint ({prefixes}) and none is the {which}'s; cannot choose"
        )
    tensors = {k[len(prefix) :]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(prefix)}
    # "backbone." is a prefix of nothing else we care about, but "" (bare dict) would also catch the
    # other backbone's keys if both were present; that case has a known prefix and never gets here.
    return tensors, prefix


def convert_official_state_dict(state_dict: Mapping[str, Any], which: str = "student") -> dict[str, Tensor]:
    """Map the authors' backbone tensors onto this project's parameter names (no model needed).

    Args:
        state_dict: a Lightning checkpoint dict, its ``state_dict``, or a bare backbone state dict.
        which: ``"student"`` (default; ``backbone.``) or ``"teacher"`` (``momentum_backbone.``).

    Returns:
        ``{our_name: tensor}`` with our shapes (``pos_embed [1, 1+N, D]``, ``channel_embed [C_max, D]``).

    Raises:
        ValueError: a key of the chosen backbone has no counterpart here (named), or an embedding has an
            unexpected shape. Missing keys are caught by :func:`load_official_checkpoint`, which knows the
            target model.
    """
    tensors, prefix = select_official_backbone(state_dict, which)
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in tensors.items():
        ours = _map_key(key)
        if ours is None:
            unknown.append(key)
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"official key {key!r} holds a {type(value).__name__}, not a tensor")
        out[ours] = _reshape(ours, value.detach())
    if unknown:
        raise ValueError(
            f"unexpected keys in the official backbone (no counterpart in {OFFICIAL_MODEL_NAME}): "
            f"{sorted(prefix + k for k in unknown)}"
        )
    return out


# --------------------------------------------------------------------------- reading files
class _Opaque:
    """Inert stand-in for any class the checkpoint names that is not a tensor building block.

    Lightning checkpoints pickle hyper-parameters (OmegaConf configs, argparse namespaces, ...) next to
    the weights. We never need them, and building them would run foreign code; this absorbs whatever
    pickle hands it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


def _opaque_class(module: str, name: str) -> type:
    return type(name, (_Opaque,), {"__module__": f"chada.opaque.{module}"})


# Names torch's own weights-only loader resolves for plain tensors/parameters, plus OrderedDict.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
}


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _opaque_class(module, name)


class _TensorsOnlyPickle:
    """A ``pickle_module`` for ``torch.load`` that never imports anything beyond tensor rebuilding."""

    Unpickler = _TensorsOnlyUnpickler
    load = staticmethod(pickle.load)
    UnpicklingError = pickle.UnpicklingError
    __name__ = "chada_tensors_only_pickle"


def read_checkpoint(path: str | os.PathLike) -> Mapping[str, Any]:
    """Read a ``.ckpt`` / ``.pt`` / ``.pth`` (torch pickle) or ``.safetensors`` file without running its code.

    ``torch.load(weights_only=True)`` first. Lightning checkpoints usually also pickle
    hyper-parameter objects (OmegaConf, ...) that the weights-only loader refuses; those files are then
    read with an unpickler that only rebuilds tensors and turns every other object into an inert
    placeholder (no import of, or call into, the classes it names).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise ValueError(
                f"{path} is not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                "it is truncated or corrupt; download or copy it again"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TensorsOnlyPickle)
        except Exception as exc:
            raise ValueError(
                f"could not read {path}: the weights-only loader refused it ({str(first).splitlines()[0]}) and "
                f"the tensors-only fallback failed ({type(exc).__name__}: {exc}). In the authors' environment, "
                f"save just the weights with: torch.save(torch.load(CKPT, map_location='cpu')['state_dict'], "
                f"'state_dict.pt') and convert that file."
            ) from exc
    except Exception as exc:  # a corrupt file makes the unpickler raise anything (KeyError, EOFError, ...)
        raise ValueError(f"could not read {path} as a torch checkpoint: {type(exc).__name__}: {exc}") from exc


def load_official_checkpoint(
    path_or_state: str | os.PathLike | Mapping[str, Any],
    which: str = "student",
    model_name: str = OFFICIAL_MODEL_NAME,
    report: ConversionReport | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """Build ``model_name`` and fill it, strictly, with the authors' weights.

    Args:
        path_or_state: a checkpoint file (``.ckpt``/``.pt``/``.pth``/``.safetensors``) or an in-memory
            checkpoint / state dict.
        which: ``"student"`` (``backbone.``; what the authors' evaluation scripts use) or ``"teacher"``.
        model_name: registered architecture to fill (default: the official variant).
        report: optional dict filled with what was mapped / ignored.
        **overrides: config overrides, e.g. ``num_heads=12`` (not recoverable from the weights).

    Returns:
        The model in eval mode.

    Raises:
        ValueError: any missing or unexpected backbone key (all named), or a shape mismatch (named).
    """
    source = None
    if isinstance(path_or_state, (str, os.PathLike)):
        source = str(path_or_state)
        path_or_state = read_checkpoint(path_or_state)
    sd = _unwrap(path_or_state)
    tensors, prefix = select_official_backbone(sd, which)
    converted = convert_official_state_dict(sd, which)
    check_finite(
        {f"{prefix}{k}": v for k, v in tensors.items() if isinstance(v, Tensor)}, source or "the checkpoint"
    )
    # Built on the meta device: no time spent on a random init that the strict load overwrites
    # entirely (checked below: every parameter and buffer is in the state dict).
    with torch.device("meta"):
        model = create_model(model_name, **overrides)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        named_missing = [f"{prefix}{_official_name(k)} (-> {k})" for k in missing]
        raise ValueError(
            f"the official backbone does not match {model_name}: missing={named_missing} unexpected={unexpected}"
        )
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in converted.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if bad:
        raise ValueError(f"shape mismatch against {model_name}: " + "; ".join(bad))
    not_in_state = [n for n, _ in model.named_buffers() if n not in expected]
    if not_in_state:  # a non-persistent buffer would be left uninitialised by to_empty
        model = create_model(model_name, **overrides)
    else:
        model = model.to_empty(device="cpu")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in converted.items()}, strict=True)
    if report is not None:
        ignored: dict[str, int] = {}
        for k in sd:
            if isinstance(k, str) and not k.startswith(prefix):
                top = k.split(".", 1)[0]
                ignored[top] = ignored.get(top, 0) + 1
        report.update(
            source=source,
            which=which,
            prefix=prefix,
            mapped={k: _map_key(k) for k in sorted(tensors)},
            ignored=ignored,
            model_name=model_name,
            overrides=dict(overrides),
        )
    return model.eval()
