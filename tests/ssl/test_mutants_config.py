"""The DINO config (chada.ssl.config) at every bound: the last value accepted, the first refused, the message.

Each range check of ``PretrainConfig.validate`` is tried on both sides of its bound with the exact
message it must give (key, bound, value), every allowed choice is accepted, and the override, file
and round-trip helpers are checked on small hand-made inputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from chada.ssl.config import (
    PretrainConfig,
    apply_overrides,
    as_config,
    config_to_dict,
    load_config,
    save_config,
)


def _set(cfg: PretrainConfig, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    obj: Any = cfg
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def _cfg(**values: Any) -> PretrainConfig:
    """Defaults, with the short warm-ups that a 1-epoch config needs, plus ``values`` (``optim__lr=...``)."""
    cfg = PretrainConfig()
    for key, v in values.items():
        _set(cfg, key.replace("__", "."), v)
    return cfg


def _refused(cfg: PretrainConfig, message: str, require_data: bool = False) -> None:
    with pytest.raises(ValueError) as info:
        cfg.validate(require_data=require_data)
    assert str(info.value) == message


INT_GE_1 = ["optim.epochs", "optim.batch_size_per_gpu", "head.out_dim", "head.hidden_dim", "head.bottleneck_dim",
            "head.nlayers", "augment.global_size", "augment.local_size", "run.save_every_steps",
            "run.log_every_steps"]  # fmt: skip


@pytest.mark.parametrize("key", INT_GE_1)
def test_integers_at_least_one(key: str) -> None:
    cfg = _cfg(optim__warmup_epochs=0, dino__warmup_teacher_temp_epochs=0)
    _set(cfg, key, 1)
    cfg.validate(require_data=False)
    _set(cfg, key, 0)
    _refused(cfg, f"{key}: expected an integer >= 1, got 0")


@pytest.mark.parametrize(
    "key", ["optim.lr", "dino.student_temp", "dino.teacher_temp", "dino.warmup_teacher_temp"]
)
def test_positive_numbers(key: str) -> None:
    cfg = _cfg()
    _set(cfg, key, 1e-9)
    cfg.validate(require_data=False)
    for bad in (0.0, -1.0):
        _set(cfg, key, bad)
        _refused(cfg, f"{key}: expected a number > 0, got {bad!r}")
    _set(cfg, key, math.nan)
    _refused(cfg, f"{key}: expected a number > 0, got nan")


NON_NEGATIVE = ["optim.min_lr", "optim.weight_decay", "optim.weight_decay_end", "optim.clip_grad",
                "optim.warmup_epochs", "dino.warmup_teacher_temp_epochs", "dino.freeze_last_layer_epochs",
                "augment.n_local", "data.num_workers", "data.shard_shuffle"]  # fmt: skip


@pytest.mark.parametrize("key", NON_NEGATIVE)
def test_non_negative_numbers(key: str) -> None:
    cfg = _cfg()
    _set(cfg, key, 0)
    cfg.validate(require_data=False)
    _set(cfg, key, -1)
    _refused(cfg, f"{key}: expected a number >= 0, got -1")
    _set(cfg, key, math.nan)
    _refused(cfg, f"{key}: expected a number >= 0, got nan")


@pytest.mark.parametrize("key", ["optim.warmup_epochs", "dino.warmup_teacher_temp_epochs"])
def test_warmups_fit_in_the_run(key: str) -> None:
    cfg = _cfg(optim__epochs=12, dino__teacher_temp_schedule="per_step", optim__warmup_epochs=0,
               dino__warmup_teacher_temp_epochs=0)  # fmt: skip
    _set(cfg, key, 12)
    cfg.validate(require_data=False)
    _set(cfg, key, 12.5)
    _refused(cfg, f"{key} (12.5) must be <= optim.epochs (12)")


def test_per_epoch_teacher_warmup_is_whole() -> None:
    _cfg(dino__warmup_teacher_temp_epochs=3.0).validate(require_data=False)
    _cfg(dino__warmup_teacher_temp_epochs=3.5, dino__teacher_temp_schedule="per_step").validate(
        require_data=False
    )
    _refused(_cfg(dino__warmup_teacher_temp_epochs=3.5), "dino.warmup_teacher_temp_epochs must be a whole number "
             "with dino.teacher_temp_schedule=per_epoch, got 3.5")  # fmt: skip


UNIT = [
    "dino.center_momentum",
    "dino.momentum_teacher",
    "dino.momentum_teacher_final",
    "model.drop_path_rate",
]


@pytest.mark.parametrize("key", [*UNIT, "optim.betas[0]", "optim.betas[1]"])
def test_numbers_in_the_unit_interval(key: str) -> None:
    def cfg_with(v: float) -> PretrainConfig:
        cfg = _cfg()
        if key.startswith("optim.betas"):
            betas = list(cfg.optim.betas)
            betas[int(key[-2])] = v
            cfg.optim.betas = (betas[0], betas[1])
        else:
            _set(cfg, key, v)
        return cfg

    for ok in (0.0, 1.0):
        cfg_with(ok).validate(require_data=False)
    for bad in (-0.01, 1.01):
        _refused(cfg_with(bad), f"{key}: expected a number in [0, 1], got {bad!r}")


@pytest.mark.parametrize("key", ["augment.global_scale", "augment.local_scale"])
def test_crop_scales(key: str) -> None:
    for ok in ((0.5, 0.5), (0.01, 1.0)):
        _cfg(**{key.replace(".", "__"): ok}).validate(require_data=False)
    for lo, hi in ((0.0, 0.5), (0.6, 0.5), (0.5, 1.01)):
        _refused(_cfg(**{key.replace(".", "__"): (lo, hi)}),
                 f"{key} must satisfy 0 < min <= max <= 1, got {[lo, hi]}")  # fmt: skip


def test_view_counts() -> None:
    for n_global, n_local in ((1, 1), (2, 0)):
        _cfg(augment__n_global=n_global, augment__n_local=n_local).validate(require_data=False)
    for n_global, n_local in ((0, 5), (1, 0)):
        _refused(_cfg(augment__n_global=n_global, augment__n_local=n_local),
                 "DINO needs augment.n_global >= 1 and at least 2 views in total")  # fmt: skip


CHOICES = {
    "run.precision": ("fp32", "bf16"),
    "run.device": ("auto", "cpu", "cuda"),
    "dino.teacher_temp_schedule": ("per_epoch", "per_step"),
    "optim.warmup_schedule": ("linspace", "ramp"),
    "optim.no_weight_decay": ("dino", "dino_and_embeddings"),
    "data.normalize": ("percentile", "minmax", "none"),
    "data.nan_policy": ("error", "replace"),
    "data.channel_sampling.scheme": ("none", "discard_one", "hierarchical"),
    "data.channel_sampling.per": ("sample", "batch"),
}


@pytest.mark.parametrize("key", list(CHOICES))
def test_every_choice_is_accepted_and_others_listed(key: str) -> None:
    for value in CHOICES[key]:
        cfg = _cfg()
        _set(cfg, key, value)
        cfg.validate(require_data=False)
    cfg = _cfg()
    _set(cfg, key, "qq")
    _refused(cfg, f"{key}: expected one of {', '.join(map(repr, CHOICES[key]))}, got 'qq'")


def test_discard_probability_and_channel_vocab() -> None:
    for ok in (0.0, 1.0):
        _cfg(data__channel_sampling__discard_p=ok).validate(require_data=False)
    for bad in (-0.5, 1.5):
        _refused(_cfg(data__channel_sampling__discard_p=bad),
                 f"data.channel_sampling.discard_p: expected a number in [0, 1], got {bad!r}")  # fmt: skip
    for ok in (None, "auto", ["DNA", "Actin"]):
        _cfg(data__channel_vocab=ok).validate(require_data=False)
    _refused(
        _cfg(data__channel_vocab="names"),
        "data.channel_vocab must be null, 'auto' or a list of channel names",
    )


@pytest.mark.parametrize("key", ["data.size", "run.threads", "run.max_steps", "data.shard_samples_per_epoch"])
def test_optional_counts(key: str) -> None:
    for ok in (None, 1):
        cfg = _cfg()
        _set(cfg, key, ok)
        cfg.validate(require_data=False)
    cfg = _cfg()
    _set(cfg, key, 0)
    _refused(cfg, f"{key}: expected an integer >= 1 or null, got 0")


def test_data_source_rules() -> None:
    _cfg(data__manifest="m.csv").validate()
    _cfg(data__shards="s.tar", data__shard_samples_per_epoch=4).validate()
    _cfg().validate(require_data=False)
    _refused(_cfg(), "set data.manifest (a manifest CSV/Parquet) or data.shards (WebDataset shards)", True)
    _refused(_cfg(data__manifest="m.csv", data__shards="s.tar", data__shard_samples_per_epoch=4),
             "set only one of data.manifest and data.shards", True)  # fmt: skip
    for n in (None, 0):
        _refused(_cfg(data__shards="s.tar", data__shard_samples_per_epoch=n),
                 "data.shards needs data.shard_samples_per_epoch (the schedules need an epoch length)", True)  # fmt: skip
    _cfg(data__manifest="m.csv", data__cache=True).validate()
    _refused(_cfg(data__shards="s.tar", data__shard_samples_per_epoch=4, data__cache=True),
             "data.cache works with data.manifest only (shards are streamed)", True)  # fmt: skip


def test_validate_returns_the_config() -> None:
    cfg = _cfg()
    assert cfg.validate(require_data=False) is cfg


def test_overrides_walk_dataclasses_and_dicts() -> None:
    cfg = apply_overrides(PretrainConfig(), [
        " model.overrides.a.b =3", "model.overrides.c=x=y", "model.overrides.d=  ",
        "data.channel_sampling={scheme: hierarchical, per: batch}", "optim.lr=2e-3",
    ])  # fmt: skip
    assert cfg.model.overrides == {"a": {"b": 3}, "c": "x=y", "d": None}
    assert (cfg.data.channel_sampling.scheme, cfg.data.channel_sampling.per) == ("hierarchical", "batch")
    assert cfg.optim.lr == 2e-3 and isinstance(cfg.optim.lr, float)
    assert apply_overrides(cfg, None) is cfg
    assert apply_overrides(PretrainConfig(), ["model.overrides.a.b.c=1"]).model.overrides == {
        "a": {"b": {"c": 1}}
    }
    with pytest.raises(
        ValueError, match=r"^data\.channel_sampling\.pr: unknown key \(did you mean 'per'\?\)"
    ):
        apply_overrides(PretrainConfig(), ["data.channel_sampling={pr: batch}"])
    with pytest.raises(ValueError, match=r"^data\.channel_sampling\.xx: unknown key; valid keys: scheme"):
        apply_overrides(PretrainConfig(), ["data.channel_sampling.xx.yy=1"])


@pytest.mark.parametrize("item,start", [
    ("lr=1", "lr: unknown key; valid keys: model, head,"),
    ("optim.lrr=1", "optim.lrr: unknown key (did you mean 'lr'?); valid keys: epochs,"),
    ("optimm.lr=1", "optimm: unknown key (did you mean 'optim'?); valid keys: model,"),
    ("data.channel_samplin.per=batch", "data.channel_samplin: unknown key (did you mean 'channel_sampling'?)"),
    ("data.channel_sampling.pr=batch", "data.channel_sampling.pr: unknown key (did you mean 'per'?)"),
    ("optim.lr", "override 'optim.lr' must look like section.key=value, e.g. optim.lr=1e-3"),
])  # fmt: skip
def test_bad_overrides_name_the_dotted_key(item: str, start: str) -> None:
    with pytest.raises(ValueError) as info:
        apply_overrides(PretrainConfig(), [item])
    assert str(info.value).startswith(start)


def test_a_bad_override_value_names_the_key_only() -> None:
    with pytest.raises(TypeError, match="optim.epochs"):
        apply_overrides(PretrainConfig(), ["optim.epochs=ten"])
    with pytest.raises(ValueError) as info:
        load_config(None, ["optim.epochs=0"])
    assert str(info.value) == "optim.epochs: expected an integer >= 1, got 0"


def test_config_files(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    with pytest.raises(FileNotFoundError) as info:
        load_config(missing)
    assert str(info.value) == f"config file {missing} not found"
    with pytest.raises(ValueError) as info:
        load_config(tmp_path)
    assert (
        str(info.value)
        == f"{tmp_path} is a directory; --config needs a YAML file such as configs/quickstart.yaml"
    )
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == PretrainConfig()
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError) as info:
        load_config(listed)
    assert str(info.value) == f"{listed}: the top level of a config must be a mapping"
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match=f"^{binary}: cannot read the config \\("):
        load_config(binary)
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1\n  epochs: [1\n")
    with pytest.raises(ValueError) as info:
        load_config(bad)
    assert str(info.value) == (f"{bad}: not valid YAML at line 4, column 1 (expected ',' or ']', but got "
                               "'<stream end>'); fix the file")  # fmt: skip
    bad.write_text("a: \x07\n")  # a reader error: no position, no problem text
    with pytest.raises(ValueError) as info:
        load_config(bad)
    assert str(info.value) == f"{bad}: not valid YAML (ReaderError); fix the file"


def test_bad_values_in_a_file_name_the_file_unless_overridden(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  epochs: 0\n")
    with pytest.raises(ValueError) as info:
        load_config(f)
    assert str(info.value) == f"{f}: optim.epochs: expected an integer >= 1, got 0"
    with pytest.raises(ValueError) as info:
        load_config(f, ["optim.lr=1e-3"])
    assert str(info.value) == "optim.epochs: expected an integer >= 1, got 0"
    f.write_text("optim:\n  epochs: ten\n")
    with pytest.raises(TypeError) as info:
        load_config(f)
    assert str(info.value).startswith(f"{f}: optim.epochs")
    f.write_text("optim:\n  epochs: 70\n")
    assert load_config(f, ["optim.lr=1e-3"]).optim.epochs == 70


def test_config_to_dict_and_save(tmp_path: Path) -> None:
    cfg = apply_overrides(PretrainConfig(), ["model.overrides.sizes=[1, 2]", "data.channel_vocab=[a, b]"])
    cfg.model.overrides["pair"] = (1, (2, 3))
    d = config_to_dict(cfg)
    assert d["augment"]["global_scale"] == [0.4, 1.0] and d["optim"]["betas"] == [0.9, 0.999]
    assert d["model"]["overrides"] == {"sizes": [1, 2], "pair": [1, [2, 3]]}
    assert d["data"]["channel_vocab"] == ["a", "b"]
    assert type(d["model"]["overrides"]["pair"][1]) is list
    out = save_config(cfg, tmp_path / "c.yaml")
    assert out == tmp_path / "c.yaml" and isinstance(out, Path)
    text = out.read_text()
    assert list(yaml.safe_load(text)) == ["model", "head", "dino", "optim", "augment", "data", "run"]
    assert yaml.safe_load(text) == d


def test_as_config_copies_and_reads(tmp_path: Path) -> None:
    base = PretrainConfig()
    cfg = as_config(base, ["optim.lr=0.25", "model.overrides.x=1"])
    assert cfg.optim.lr == 0.25 and base.optim.lr == 5e-4 and base.model.overrides == {}
    from_dict = as_config({"optim": {"epochs": 3}}, ["optim.lr=0.5"])
    assert (from_dict.optim.epochs, from_dict.optim.lr) == (3, 0.5)
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  epochs: 40\n")
    assert as_config(str(f), None).optim.epochs == 40
    assert as_config(f, ["optim.epochs=50"]).optim.epochs == 50
    with pytest.raises(TypeError) as info:
        as_config(3, None)  # type: ignore[arg-type]
    assert str(info.value) == "config must be a PretrainConfig, a dict or a YAML path, got int"
