"""The value checks of a DINO pretraining config (:meth:`chada.ssl.config.PretrainConfig.validate`).

Each check raises ``ValueError`` naming the key and what it expects (``optim.lr: expected a number > 0,
got 0``), before anything is built.
"""

from __future__ import annotations

from typing import Any

from chada.config_reader import choice, expected

# ``cfg`` is a :class:`chada.ssl.config.PretrainConfig`; not imported here, not even for type checking,
# because config.py calls into this module (the layer test counts every import as an edge).
PretrainConfig = Any

__all__ = ["check_config"]


def check_config(cfg: PretrainConfig, require_data: bool = True) -> None:
    """Every check below; ``require_data=False`` skips the data source (given on the command line later)."""
    if require_data:
        _check_data_source(cfg)
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_views_and_channels(cfg)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    choice(value, name, allowed)


def _check_data_source(cfg: PretrainConfig) -> None:
    """One data source: a manifest or WebDataset shards (these with an epoch length)."""
    if cfg.data.manifest is None and cfg.data.shards is None:
        raise ValueError("set data.manifest (a manifest CSV/Parquet) or data.shards (WebDataset shards)")
    if cfg.data.manifest is not None and cfg.data.shards is not None:
        raise ValueError("set only one of data.manifest and data.shards")
    if cfg.data.shards is not None and not cfg.data.shard_samples_per_epoch:
        raise ValueError(
            "data.shards needs data.shard_samples_per_epoch (the schedules need an epoch length)"
        )


def _check_choices(cfg: PretrainConfig) -> None:
    """Every value from a fixed set, and the model name among the registered ones."""
    _choice("run.precision", cfg.run.precision, ("fp32", "bf16"))
    _choice("run.device", cfg.run.device, ("auto", "cpu", "cuda"))
    _choice("dino.teacher_temp_schedule", cfg.dino.teacher_temp_schedule, ("per_epoch", "per_step"))
    _choice("optim.warmup_schedule", cfg.optim.warmup_schedule, ("linspace", "ramp"))
    _choice("optim.no_weight_decay", cfg.optim.no_weight_decay, ("dino", "dino_and_embeddings"))
    from chada.data.normalize import METHODS

    _choice("data.normalize", cfg.data.normalize, METHODS)
    _choice("data.nan_policy", cfg.data.nan_policy, ("error", "replace"))
    from chada.models.registry import model_spec

    model_spec(cfg.model.name)  # unknown model: ValueError listing the registered names
    if isinstance(cfg.data.channel_vocab, str) and cfg.data.channel_vocab != "auto":
        raise ValueError("data.channel_vocab must be null, 'auto' or a list of channel names")


def _check_ranges(cfg: PretrainConfig) -> None:
    """Sizes, counts, temperatures, rates and momenta within their ranges."""
    o, d, h, a = cfg.optim, cfg.dino, cfg.head, cfg.augment
    for name, v in (
        ("optim.epochs", o.epochs), ("optim.batch_size_per_gpu", o.batch_size_per_gpu),
        ("head.out_dim", h.out_dim), ("head.hidden_dim", h.hidden_dim),
        ("head.bottleneck_dim", h.bottleneck_dim), ("head.nlayers", h.nlayers),
        ("augment.global_size", a.global_size), ("augment.local_size", a.local_size),
        ("run.save_every_steps", cfg.run.save_every_steps), ("run.log_every_steps", cfg.run.log_every_steps),
    ):  # fmt: skip
        if v < 1:
            raise expected(name, "an integer >= 1", v)
    for name, v in (
        ("optim.lr", o.lr), ("dino.student_temp", d.student_temp), ("dino.teacher_temp", d.teacher_temp),
        ("dino.warmup_teacher_temp", d.warmup_teacher_temp),
    ):  # fmt: skip
        if not v > 0:  # also refuses NaN
            raise expected(name, "a number > 0", v)
    for name, v in (
        ("optim.min_lr", o.min_lr), ("optim.weight_decay", o.weight_decay),
        ("optim.weight_decay_end", o.weight_decay_end), ("optim.clip_grad", o.clip_grad),
        ("optim.warmup_epochs", o.warmup_epochs), ("dino.warmup_teacher_temp_epochs", d.warmup_teacher_temp_epochs),
        ("dino.freeze_last_layer_epochs", d.freeze_last_layer_epochs), ("augment.n_local", a.n_local),
        ("data.num_workers", cfg.data.num_workers), ("data.shard_shuffle", cfg.data.shard_shuffle),
    ):  # fmt: skip
        if not v >= 0:
            raise expected(name, "a number >= 0", v)
    for name, v in (
        ("optim.warmup_epochs", o.warmup_epochs),
        ("dino.warmup_teacher_temp_epochs", d.warmup_teacher_temp_epochs),
    ):
        if v > o.epochs:
            raise ValueError(f"{name} ({v}) must be <= optim.epochs ({o.epochs})")
    if d.teacher_temp_schedule == "per_epoch" and float(d.warmup_teacher_temp_epochs) != int(
        d.warmup_teacher_temp_epochs
    ):
        raise ValueError(
            "dino.warmup_teacher_temp_epochs must be a whole number with dino.teacher_temp_schedule=per_epoch, "
            f"got {d.warmup_teacher_temp_epochs}"
        )
    for name, v in (
        ("dino.center_momentum", d.center_momentum), ("dino.momentum_teacher", d.momentum_teacher),
        ("dino.momentum_teacher_final", d.momentum_teacher_final), ("optim.betas[0]", o.betas[0]),
        ("optim.betas[1]", o.betas[1]), ("model.drop_path_rate", cfg.model.drop_path_rate),
    ):  # fmt: skip
        if not 0.0 <= v <= 1.0:
            raise expected(name, "a number in [0, 1]", v)


def _check_views_and_channels(cfg: PretrainConfig) -> None:
    """Crop scales, the number of views, channel sampling, caching and the optional counts."""
    a = cfg.augment
    for name, (lo, hi) in (
        ("augment.global_scale", a.global_scale),
        ("augment.local_scale", a.local_scale),
    ):
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {[lo, hi]}")
    if a.n_global < 1 or a.n_global + a.n_local < 2:
        raise ValueError("DINO needs augment.n_global >= 1 and at least 2 views in total")
    cs = cfg.data.channel_sampling
    _choice("data.channel_sampling.scheme", cs.scheme, ("none", "discard_one", "hierarchical"))
    _choice("data.channel_sampling.per", cs.per, ("sample", "batch"))
    if not 0.0 <= cs.discard_p <= 1.0:
        raise expected("data.channel_sampling.discard_p", "a number in [0, 1]", cs.discard_p)
    if cfg.data.cache and cfg.data.shards is not None:
        raise ValueError("data.cache works with data.manifest only (shards are streamed)")
    for name, v in (("data.size", cfg.data.size), ("run.threads", cfg.run.threads),
                    ("run.max_steps", cfg.run.max_steps), ("data.shard_samples_per_epoch", cfg.data.shard_samples_per_epoch)):  # fmt: skip
        if v is not None and v < 1:
            raise expected(name, "an integer >= 1 or null", v)
