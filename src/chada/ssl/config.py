"""DINO pretraining configuration: nested dataclasses, loaded from YAML, with dotted overrides.

Every field has DINO's (Caron et al. 2021) default unless its comment says otherwise::

    cfg = load_config("configs/quickstart.yaml", ["optim.lr=1e-3", "optim.epochs=5"])
    cfg.optim.lr          # 0.001

Unknown keys (in the file or in an override) are errors that name the valid keys. Override values are
parsed as YAML (``true``, ``[1, 2]``, ``null``) and then coerced to the field's type, so ``1e-3``
(a string for YAML 1.1) becomes a float for a float field.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ModelConfig",
    "HeadConfig",
    "DinoConfig",
    "OptimConfig",
    "AugmentConfig",
    "ChannelSamplingConfig",
    "DataConfig",
    "RunConfig",
    "PretrainConfig",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "save_config",
]


@dataclass
class ModelConfig:
    """Backbone: a registered model name (``chada.list_models()``) plus config overrides."""

    name: str = "chada_vit_moyen"
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {drop_path_rate: 0.1, img_size: 64}
    # forward(images, pool=...) used for DINO; null: the model's default, or its fixed-size pool when the
    # default's size depends on the channel count (one_channel_vit: "cls" [B, C*D] -> "mean" [B, D])
    pool: str | None = None


@dataclass
class HeadConfig:
    """DINO projection head."""

    out_dim: int = 65536  # K prototypes; the ChAda-ViT authors used 4096
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True


@dataclass
class DinoConfig:
    """Loss, temperatures, teacher EMA."""

    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07  # DINO's ViT-S/16 recipe (0.04 -> 0.07)
    warmup_teacher_temp_epochs: float = 30
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    momentum_teacher_final: float = 1.0
    freeze_last_layer_epochs: float = 1  # the head's last layer gets no update during these epochs


@dataclass
class OptimConfig:
    """AdamW with DINO's schedules; LR is scaled by (global batch) / 256."""

    epochs: int = 100
    batch_size_per_gpu: int = 64  # per process
    lr: float = 5e-4  # base LR for a global batch of 256
    scale_lr_with_batch: bool = True
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # per-parameter gradient-norm clip as in DINO; 0 disables
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class AugmentConfig:
    """Multi-crop (:class:`chada.data.MultiCropAugment`): 2 global + N local crops."""

    global_size: int = 224
    local_size: int = 96
    n_global: int = 2
    n_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)  # DINO; the ChAda-ViT authors used (0.08, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    extra: dict[str, Any] = field(default_factory=dict)  # any other MultiCropAugment keyword


@dataclass
class ChannelSamplingConfig:
    """Channel sampling per training step (:mod:`chada.ssl.channel_sampling`); DINO default: none."""

    scheme: str = "none"  # "none" | "discard_one" (authors' random discarder) | "hierarchical" (k ~ U{1..C})
    per: str = "sample"  # "sample": each image its own k | "batch": one k per batch, capped by each image's C
    shuffle: bool = False  # random channel order (ids follow names with data.channel_vocab, else positions)
    discard_p: float = 0.5  # probability of dropping one channel with scheme discard_one


@dataclass
class DataConfig:
    """Where the images come from: a manifest (map-style) or WebDataset shards (streaming)."""

    manifest: str | None = None
    shards: str | None = None  # shards.json / folder / tar pattern (streaming, no sampler)
    shard_samples_per_epoch: int | None = None  # required with ``shards`` (defines the schedule length)
    shard_shuffle: int = 1000
    root: str | None = None
    split: str | None = "train"  # null = every row of the manifest
    datasets: list[str] | None = None
    normalize: str = "percentile"
    size: int | None = None  # resize every image to this size before cropping
    channel_vocab: list[str] | str | None = None  # null: slot = position (paper); "auto": names in the corpus
    num_workers: int = 2
    pin_memory: bool = True
    cache: bool = False  # decode + normalise every image once into RAM before training (small corpora)
    channel_sampling: ChannelSamplingConfig = field(default_factory=ChannelSamplingConfig)


@dataclass
class RunConfig:
    """Output, device, precision, logging, checkpointing."""

    output_dir: str = "runs/dino"
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    precision: str = "fp32"  # "fp32" | "bf16" (autocast)
    compile: bool = False  # torch.compile the student and teacher
    threads: int | None = None  # torch intra-op threads per process (default: cores / processes)
    max_steps: int | None = None  # stop (with a checkpoint) after this global step; schedules keep the full length
    save_every_steps: int = 500
    log_every_steps: int = 10
    tensorboard: bool = True
    progress: bool = True
    find_unused_parameters: bool = False
    export_student: bool = True
    export_init: bool = True  # also write OUT/init/: the backbone at step 0 (the untrained baseline)


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> PretrainConfig:
        """Raise ValueError on values that cannot work."""
        if self.data.manifest is None and self.data.shards is None:
            raise ValueError("set data.manifest (a manifest CSV/Parquet) or data.shards (WebDataset shards)")
        if self.data.manifest is not None and self.data.shards is not None:
            raise ValueError("set only one of data.manifest and data.shards")
        if self.data.shards is not None and not self.data.shard_samples_per_epoch:
            raise ValueError("data.shards needs data.shard_samples_per_epoch (the schedules need an epoch length)")
        if self.run.precision not in ("fp32", "bf16"):
            raise ValueError(f"run.precision must be 'fp32' or 'bf16', got {self.run.precision!r}")
        if self.run.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"run.device must be 'auto', 'cpu' or 'cuda', got {self.run.device!r}")
        if isinstance(self.data.channel_vocab, str) and self.data.channel_vocab != "auto":
            raise ValueError("data.channel_vocab must be null, 'auto' or a list of channel names")
        for name, v in (("optim.epochs", self.optim.epochs), ("optim.batch_size_per_gpu", self.optim.batch_size_per_gpu)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.augment.n_global < 1 or self.augment.n_global + self.augment.n_local < 2:
            raise ValueError("DINO needs n_global >= 1 and at least 2 views in total")
        cs = self.data.channel_sampling
        if cs.scheme not in ("none", "discard_one", "hierarchical") or cs.per not in ("sample", "batch"):
            raise ValueError(
                "data.channel_sampling.scheme must be none, discard_one or hierarchical and .per sample or batch; "
                f"got {cs.scheme!r}, {cs.per!r}"
            )
        if not 0.0 <= cs.discard_p <= 1.0:
            raise ValueError(f"data.channel_sampling.discard_p must be in [0, 1], got {cs.discard_p}")
        if self.data.cache and self.data.shards is not None:
            raise ValueError("data.cache works with data.manifest only (shards are streamed)")
        if self.run.save_every_steps < 1 or self.run.log_every_steps < 1:
            raise ValueError("run.save_every_steps and run.log_every_steps must be >= 1")
        return self


# ----------------------------------------------------------------------------- (de)serialisation
def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) < len(typing.get_args(tp))
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type (str numbers, lists -> tuples); raise TypeError otherwise."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise TypeError(f"{where} may not be null")
    if inner is Any:
        return value
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):  # e.g. list[str] | str: accept any member that fits
        for member in typing.get_args(inner):
            try:
                return _coerce(value, member, where)
            except TypeError:
                continue
        raise TypeError(f"{where}: {value!r} does not fit {inner}")
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise TypeError(f"{where}: expected true/false, got {value!r}")
    if inner is int:
        if isinstance(value, bool):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise TypeError(f"{where}: expected an integer, got {value!r}") from None
            if f.is_integer():
                return int(f)
        raise TypeError(f"{where}: expected an integer, got {value!r}")
    if inner is float:
        if isinstance(value, bool):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise TypeError(f"{where}: expected a number, got {value!r}") from None
        raise TypeError(f"{where}: expected a number, got {value!r}")
    if inner is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(f"{where}: expected a string, got {value!r}")
    if origin is tuple:
        args = typing.get_args(inner)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TypeError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(inner) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _unknown_key_error(key: str, valid: list[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown config key {where}{key!r}{hint}; valid keys: {', '.join(valid)}")


def _fill(obj: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if not isinstance(values, dict):
        raise TypeError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping, got {values!r}")
    for key, value in values.items():
        if key not in names:
            raise _unknown_key_error(str(key), names, prefix)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, f"{prefix}{key}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{prefix}{key}"))


def config_from_dict(values: dict[str, Any] | None) -> PretrainConfig:
    """Build a :class:`PretrainConfig` from nested dicts (unknown keys raise ValueError)."""
    cfg = PretrainConfig()
    _fill(cfg, values or {}, "")
    return cfg


def apply_overrides(cfg: PretrainConfig, overrides: list[str] | None) -> PretrainConfig:
    """Apply ``section.key=value`` strings (``model.overrides.img_size=64`` sets a dict entry)."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. optim.lr=1e-3")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        value = yaml.safe_load(raw) if raw.strip() else None
        obj: Any = cfg
        for i, part in enumerate(parts[:-1]):
            if isinstance(obj, dict):
                obj = obj.setdefault(part, {})
                continue
            names = [f.name for f in dataclasses.fields(obj)]
            if part not in names:
                raise _unknown_key_error(part, names, ".".join(parts[:i]) + ("." if i else ""))
            obj = getattr(obj, part)
        last = parts[-1]
        if isinstance(obj, dict):
            obj[last] = value
            continue
        if dataclasses.is_dataclass(getattr(obj, last, None)):
            _fill(getattr(obj, last), value, f"{dotted}.")
            continue
        names = [f.name for f in dataclasses.fields(obj)]
        if last not in names:
            raise _unknown_key_error(last, names, ".".join(parts[:-1]) + ("." if len(parts) > 1 else ""))
        setattr(obj, last, _coerce(value, typing.get_type_hints(type(obj))[last], dotted))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a YAML config (or start from the defaults with ``path=None``), apply overrides, validate
    everything but the data source (checked when training starts)."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} not found")
        values = yaml.safe_load(p.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{p}: the top level of a config must be a mapping")
    cfg = config_from_dict(values)
    return apply_overrides(cfg, overrides)


def config_to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), round-trips through :func:`config_from_dict`."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: PretrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    from chada.io import atomic_write_bytes

    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write_bytes(path, text.encode())
    return Path(path)
