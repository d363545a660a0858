"""DINO pretraining configuration: nested dataclasses, loaded from YAML, with dotted overrides.

Every field has DINO's (Caron et al. 2021) default unless its comment says otherwise::

    cfg = load_config("configs/quickstart.yaml", ["optim.lr=1e-3", "optim.epochs=5"])
    cfg.optim.lr          # 0.001

Unknown keys (in the file or in an override) are errors that name the valid keys. Override values are
parsed as YAML (``true``, ``[1, 2]``, ``null``) and then coerced to the field's type, so ``1e-3``
(a string for YAML 1.1) becomes a float for a float field.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chada.config_reader import coerce, fill, in_file, unknown_key_error

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
    "as_config",
]


@dataclass
class ModelConfig:
    """Backbone: a registered model name (``chada.list_models()``) plus config overrides."""

    name: str = "chada_vit_moyen"
    overrides: dict[str, Any] = field(
        default_factory=dict
    )  # e.g. {img_size: 64}; wins over drop_path_rate below
    # Stochastic depth of the student (DINO's ViT-S recipe: 0.1). The teacher never drops: it runs in
    # eval mode, as DINO builds it without drop path. Applied to architectures that have the field.
    drop_path_rate: float = 0.1
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
    # "per_epoch" (DINO): one temperature per epoch, np.linspace(warmup_teacher_temp, teacher_temp,
    # warmup_teacher_temp_epochs)[epoch], then constant. "per_step": a ramp over the warm-up steps; kept
    # only so that runs measured with it (the CPU quickstart) stay reproducible.
    teacher_temp_schedule: str = "per_epoch"


@dataclass
class OptimConfig:
    """AdamW with DINO's schedules; LR is scaled by (global batch) / 256."""

    epochs: int = 100
    batch_size_per_gpu: int = 64  # per process
    lr: float = 5e-4  # base LR for a global batch of 256
    scale_lr_with_batch: bool = True
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    # "linspace" (DINO): np.linspace(0, lr, warmup_steps), the base LR is reached at the last warm-up
    # step. "ramp": lr * step / warmup_steps (one step short); kept for the quickstart's measured runs.
    warmup_schedule: str = "linspace"
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # per-parameter gradient-norm clip as in DINO; 0 disables
    betas: tuple[float, float] = (0.9, 0.999)
    # Which parameters get no weight decay. "dino": biases and 1-D parameters only (DINO's
    # get_params_groups), so pos_embed, cls_token and channel_embed ARE decayed. "dino_and_embeddings":
    # also the backbone's no_weight_decay() tensors (pos_embed, cls_token, channel_embed: the timm/DeiT
    # convention) and the head's weight_g; kept for the quickstart's measured runs.
    no_weight_decay: str = "dino"


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
    # NaN/inf pixels: "error" names the image, channel and file; "replace" fills them with the channel's
    # median (a warning per image). Shards hold pixels checked when `chada data shard` wrote them.
    nan_policy: str = "error"
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
    max_steps: int | None = (
        None  # stop (with a checkpoint) after this global step; schedules keep the full length
    )
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

    def validate(self, require_data: bool = True) -> PretrainConfig:
        """Raise ValueError on values that cannot work, naming the key (:mod:`chada.ssl.config_checks`).

        ``require_data=False`` skips the data-source check (done when training starts, so that a config
        file may leave ``data.manifest`` to the command line).
        """
        from chada.ssl.config_checks import check_config

        check_config(self, require_data)
        return self


def config_from_dict(values: dict[str, Any] | None) -> PretrainConfig:
    """Build a :class:`PretrainConfig` from nested dicts (unknown keys raise ValueError)."""
    cfg = PretrainConfig()
    fill(cfg, values or {}, "")
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
                raise unknown_key_error(part, names, ".".join(parts[:i]) + ("." if i else ""))
            obj = getattr(obj, part)
        last = parts[-1]
        if isinstance(obj, dict):
            obj[last] = value
            continue
        if dataclasses.is_dataclass(getattr(obj, last, None)):
            fill(getattr(obj, last), value, f"{dotted}.")
            continue
        names = [f.name for f in dataclasses.fields(obj)]
        if last not in names:
            raise unknown_key_error(last, names, ".".join(parts[:-1]) + ("." if len(parts) > 1 else ""))
        setattr(obj, last, coerce(value, typing.get_type_hints(type(obj))[last], dotted))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a YAML config (or start from the defaults with ``path=None``), apply overrides, validate
    everything but the data source (checked when training starts).

    Raises FileNotFoundError for a missing file, ValueError naming the file for a directory, bad YAML
    or a bad key/value, and ValueError naming the key for a bad override.
    """
    values: dict[str, Any] = {}
    p = None
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} not found")
        if p.is_dir():
            raise ValueError(
                f"{p} is a directory; --config needs a YAML file such as configs/quickstart.yaml"
            )
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{p}: cannot read the config ({exc})") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(exc, "problem", None) or type(exc).__name__
            raise ValueError(f"{p}: not valid YAML{where} ({what}); fix the file") from exc
        if not isinstance(values, dict):
            raise ValueError(f"{p}: the top level of a config must be a mapping")
    try:
        cfg = config_from_dict(values)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{p}: {exc}") from exc
    cfg = apply_overrides(cfg, overrides)
    if overrides:  # the bad value may come from the file or from an override: the key alone is named
        return cfg.validate(require_data=False)
    try:
        return cfg.validate(require_data=False)
    except (ValueError, TypeError) as exc:
        raise (exc if p is None else in_file(p, exc)) from None


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


def as_config(
    config: PretrainConfig | dict[str, Any] | str | Path, overrides: list[str] | None
) -> PretrainConfig:
    """A :class:`PretrainConfig` from a config (copied), a nested dict or a YAML path, with ``overrides``."""
    if isinstance(config, PretrainConfig):
        return apply_overrides(copy.deepcopy(config), overrides)
    if isinstance(config, dict):
        return apply_overrides(config_from_dict(config), overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    raise TypeError(f"config must be a PretrainConfig, a dict or a YAML path, got {type(config).__name__}")
