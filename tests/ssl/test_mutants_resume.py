"""The resume rules (chada.ssl.resume_rules) on hand-made checkpoint states, without training.

Which config changes a ``--resume`` accepts, checked key by key against the rules written out here:
a safe key changes silently, ``data.num_workers`` only with manifest data, ``world_size`` counts as a
key, every other change is refused unless allowed by name, and an allowance for a key that does not
exist is an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from chada.ssl.config import PretrainConfig, apply_overrides, config_to_dict
from chada.ssl.resume_rules import check_resume_config, config_changes, flatten

CKPT = Path("runs/x/checkpoint.pth")


def _cfg(*overrides: str) -> PretrainConfig:
    return apply_overrides(PretrainConfig(), list(overrides))


def _state(*overrides: str, world_size: int | None = 1) -> dict:
    state: dict = {"config": config_to_dict(_cfg(*overrides))}
    if world_size is not None:
        state["world_size"] = world_size
    return state


def test_flatten_joins_nested_keys_with_dots() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [2, 3]}}, "e": None}) == {"a.b": 1, "a.c.d": [2, 3], "e": None}
    assert flatten({}) == {}
    assert flatten(5, "x.") == {"x": 5}


def test_config_changes_lists_result_changing_keys_in_order() -> None:
    saved = config_to_dict(_cfg())
    new = _cfg("optim.lr=0.01", "model.name=chada_vit_test", "run.max_steps=7", "run.progress=false")
    changes = config_changes(saved, new)
    # run.max_steps and run.progress are safe: left out; the rest sorted by key
    assert list(changes) == ["model.name", "optim.lr"]
    assert changes["optim.lr"] == (PretrainConfig().optim.lr, 0.01)
    assert changes["model.name"] == (PretrainConfig().model.name, "chada_vit_test")
    assert config_changes(saved, _cfg()) == {}


@pytest.mark.parametrize("key,value", [
    ("run.output_dir", "elsewhere"), ("run.max_steps", "3"), ("run.save_every_steps", "9"),
    ("run.log_every_steps", "9"), ("run.tensorboard", "false"), ("run.progress", "false"),
    ("run.export_student", "false"), ("run.export_init", "false"), ("run.threads", "3"),
    ("run.find_unused_parameters", "true"), ("data.pin_memory", "false"), ("data.cache", "true"),
])  # fmt: skip
def test_every_safe_key_changes_silently(key: str, value: str) -> None:
    base = _cfg()
    new = _cfg(f"{key}={value}")
    assert flatten(config_to_dict(new))[key] != flatten(config_to_dict(base))[key]  # a real change
    assert config_changes(config_to_dict(base), new) == {}


def test_num_workers_is_safe_only_for_manifest_data() -> None:
    saved = config_to_dict(_cfg())
    assert config_changes(saved, _cfg("data.num_workers=3")) == {}
    shards = ["data.shards=s-{0..1}.tar", "data.shard_samples_per_epoch=8"]
    saved_shards = config_to_dict(_cfg(*shards))
    assert config_changes(saved_shards, _cfg(*shards, "data.num_workers=3")) == {
        "data.num_workers": (PretrainConfig().data.num_workers, 3)
    }


def test_a_key_only_one_side_has_is_a_change() -> None:
    saved = config_to_dict(_cfg())
    saved["model"]["overrides"] = {"img_size": 64}
    changes = config_changes(saved, _cfg())
    assert changes == {"model.overrides.img_size": (64, None)}
    changes = config_changes(config_to_dict(_cfg()), _cfg("model.overrides.img_size=32"))
    assert changes == {"model.overrides.img_size": (None, 32)}


def test_same_config_and_world_size_resumes_without_a_word(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chada.ssl.resume_rules"):
        check_resume_config(CKPT, _state(), _cfg("run.progress=false"), 1, [], announce=True)
    assert caplog.records == []


def test_unreadable_recorded_config_names_the_checkpoint() -> None:
    for bad in ({"optim": {"lrr": 1}}, {"optim": {"epochs": "ten"}}):
        with pytest.raises(ValueError) as info:
            check_resume_config(CKPT, {"config": bad, "world_size": 1}, _cfg(), 1, [], announce=False)
        msg = str(info.value)
        assert msg.startswith(f"{CKPT}: its recorded config cannot be read (")
        assert msg.endswith("); delete it to start over")


def test_refusal_lists_every_change_and_the_allowance_to_give() -> None:
    with pytest.raises(ValueError) as info:
        check_resume_config(CKPT, _state(), _cfg("optim.lr=0.01", "optim.epochs=2"), 1, [], announce=False)
    lr = PretrainConfig().optim.lr
    epochs = PretrainConfig().optim.epochs
    assert str(info.value) == (
        f"cannot resume {CKPT}: the config differs from the checkpoint's in values that change the result "
        f"(optim.epochs: {epochs!r} -> 2; optim.lr: {lr!r} -> 0.01). Restore them, or allow the change with "
        "--resume-allow-changes optim.epochs,optim.lr, or choose another run.output_dir"
    )


def test_world_size_counts_as_a_key() -> None:
    with pytest.raises(ValueError) as info:
        check_resume_config(CKPT, _state(world_size=2), _cfg(), 1, [], announce=False)
    assert "(world_size: 2 -> 1)" in str(info.value) and "--resume-allow-changes world_size," in str(
        info.value
    )
    # a checkpoint that recorded no world size differs from every world size
    with pytest.raises(ValueError, match=r"world_size: None -> 1"):
        check_resume_config(CKPT, _state(world_size=None), _cfg(), 1, [], announce=False)
    check_resume_config(CKPT, _state(world_size=2), _cfg(), 1, ["world_size"], announce=False)


def test_allowed_changes_are_announced_only_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    lr = PretrainConfig().optim.lr
    with caplog.at_level(logging.WARNING, logger="chada.ssl.resume_rules"):
        check_resume_config(CKPT, _state(world_size=2), _cfg("optim.lr=0.01"), 1, ["optim.lr", "world_size"],
                            announce=False)  # fmt: skip
        assert caplog.records == []
        check_resume_config(CKPT, _state(world_size=2), _cfg("optim.lr=0.01"), 1, ["optim.lr", "world_size"],
                            announce=True)  # fmt: skip
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"resuming {CKPT} with allowed config changes: optim.lr {lr!r} -> 0.01, world_size 2 -> 1"
    )


def test_only_the_allowed_keys_pass() -> None:
    # one of two changes allowed: the other is still refused, and only it is listed
    with pytest.raises(ValueError) as info:
        check_resume_config(
            CKPT, _state(), _cfg("optim.lr=0.01", "optim.epochs=2"), 1, ["optim.lr"], announce=False
        )
    assert "(optim.epochs: " in str(info.value) and "optim.lr:" not in str(info.value)
    assert "--resume-allow-changes optim.epochs, or" in str(info.value)


def test_an_allowance_must_name_a_key_that_exists() -> None:
    # existing keys may be allowed even when unchanged (a script passes the same list every time)
    check_resume_config(
        CKPT, _state(), _cfg(), 1, ["optim.lr", "world_size", "run.max_steps"], announce=False
    )
    # a key that only the checkpoint has is a change, so it may be allowed
    state = _state()
    state["config"]["model"]["overrides"] = {"img_size": 64}
    check_resume_config(CKPT, state, _cfg(), 1, ["model.overrides.img_size"], announce=False)
    with pytest.raises(ValueError) as info:
        check_resume_config(CKPT, _state(), _cfg(), 1, ["optim.lrr", "optim.lr", "zz"], announce=False)
    assert str(info.value) == "--resume-allow-changes: unknown key(s) ['optim.lrr', 'zz']"
