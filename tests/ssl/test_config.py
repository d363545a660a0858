"""Config: YAML loading, dotted overrides with type coercion, unknown keys, provided configs."""

from pathlib import Path

import pytest

from chada.ssl.config import PretrainConfig, apply_overrides, config_from_dict, config_to_dict, load_config
from tests.helpers import REPO

CONFIGS = REPO / "configs"


def test_defaults_are_dino() -> None:
    c = PretrainConfig()
    assert c.head.out_dim == 65536 and c.head.bottleneck_dim == 256 and c.head.nlayers == 3
    assert c.dino.student_temp == 0.1 and c.dino.center_momentum == 0.9
    assert (c.dino.warmup_teacher_temp, c.dino.teacher_temp) == (0.04, 0.07)
    assert (c.dino.momentum_teacher, c.dino.momentum_teacher_final) == (0.996, 1.0)
    assert (c.optim.weight_decay, c.optim.weight_decay_end) == (0.04, 0.4)
    assert c.augment.n_global == 2 and c.dino.freeze_last_layer_epochs == 1


def test_overrides_coerce_types(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1.0e-4\nmodel:\n  name: chada_vit_test\n")
    c = load_config(
        f,
        [
            "optim.lr=1e-3",  # a string for YAML 1.1, a float for the field
            "optim.epochs=30",
            "augment.global_scale=[0.3, 1]",
            "run.tensorboard=false",
            "model.overrides.img_size=64",
            "data.channel_vocab=auto",
            "data.datasets=[a, b]",
            "run.max_steps=null",
        ],
    )
    assert c.optim.lr == 1e-3 and isinstance(c.optim.lr, float)
    assert c.optim.epochs == 30
    assert c.augment.global_scale == (0.3, 1.0)
    assert c.run.tensorboard is False
    assert c.model.name == "chada_vit_test" and c.model.overrides == {"img_size": 64}
    assert c.data.channel_vocab == "auto" and c.data.datasets == ["a", "b"]
    assert c.run.max_steps is None


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="optimizer: unknown key"):
        load_config(None, ["optimizer.lr=1"])
    with pytest.raises(ValueError, match="head.outdim: unknown key"):
        config_from_dict({"head": {"outdim": 3}})
    with pytest.raises(TypeError):
        load_config(None, ["optim.epochs=ten"])
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides(PretrainConfig(), ["optim.lr"])
    f = tmp_path / "bad.yaml"
    f.write_text("run:\n  seeds: 3\n")
    with pytest.raises(ValueError, match="seeds"):
        load_config(f)


def test_round_trip() -> None:
    c = load_config(None, ["optim.lr=0.01", "augment.local_scale=[0.1, 0.3]"])
    again = config_from_dict(config_to_dict(c))
    assert again == c


def test_validate() -> None:
    with pytest.raises(ValueError, match="data.manifest"):
        PretrainConfig().validate()
    PretrainConfig().validate(require_data=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-1e-3", "optim.lr: expected a number > 0, got -0.001"),
        ("optim.lr=0", "optim.lr: expected a number > 0, got 0.0"),
        ("optim.lr=.nan", "optim.lr: expected a number > 0, got nan"),
        ("optim.batch_size_per_gpu=0", "optim.batch_size_per_gpu: expected an integer >= 1, got 0"),
        ("optim.epochs=0", "optim.epochs: expected an integer >= 1, got 0"),
        ("optim.warmup_epochs=101", r"optim.warmup_epochs \(101.0\) must be <= optim.epochs \(100\)"),
        ("dino.warmup_teacher_temp_epochs=101", "warmup_teacher_temp_epochs .* must be <= optim.epochs"),
        ("dino.warmup_teacher_temp_epochs=2.5", "whole number"),
        ("dino.teacher_temp=0", "dino.teacher_temp: expected a number > 0"),
        ("dino.momentum_teacher=1.5", "dino.momentum_teacher: expected a number in \\[0, 1\\], got 1.5"),
        ("model.drop_path_rate=-0.1", "model.drop_path_rate"),
        ("run.precision=fp16", "run.precision: expected one of 'fp32', 'bf16', got 'fp16'"),
        ("run.device=gpu", "run.device: expected one of"),
        ("data.normalize=zscore", "data.normalize: expected one of"),
        ("optim.no_weight_decay=none", "optim.no_weight_decay: expected one of"),
        ("optim.warmup_schedule=cosine", "optim.warmup_schedule: expected one of"),
        ("dino.teacher_temp_schedule=per_epochs", "did you mean 'per_epoch'"),
        ("data.channel_sampling.scheme=drop", "data.channel_sampling.scheme: expected one of"),
        ("augment.global_scale=[0.5, 0.2]", "augment.global_scale"),
        ("model.name=chada_vit_mayen", "unknown model 'chada_vit_mayen'"),
        ("run.threads=0", "run.threads: expected an integer >= 1 or null, got 0"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_bad_config_files_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1, 2\n")
    with pytest.raises(ValueError, match=f"{bad}: not valid YAML at line 3"):
        load_config(bad)
    with pytest.raises(ValueError, match="is a directory"):
        load_config(tmp_path)
    typo = tmp_path / "typo.yaml"
    typo.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(ValueError, match=f"{typo}: optim.lrr: unknown key \\(did you mean 'lr'\\?\\)"):
        load_config(typo)
    from chada.cli import main

    for path in (bad, tmp_path):
        assert main(["pretrain", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["quickstart.yaml", "idrcell100k_moyen.yaml"])
def test_provided_configs_load(name: str) -> None:
    c = load_config(CONFIGS / name).validate()
    from chada import list_models

    assert c.model.name in list_models()


def test_paper_recipe_values() -> None:
    c = load_config(CONFIGS / "idrcell100k_moyen.yaml")
    assert c.model.name == "chada_vit_moyen"
    assert c.optim.epochs == 400 and c.optim.lr == 1e-4 and c.optim.batch_size_per_gpu == 256
