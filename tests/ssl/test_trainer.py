"""DINO trainer end to end on a tiny synthetic corpus: logs, export, resume == uninterrupted, CLI."""

import csv
import json
from pathlib import Path

import pytest
import torch

from chada.ssl.config import load_config
from chada.ssl.trainer import CHECKPOINT_NAME, LOG_NAME, Trainer, pretrain
from tests.helpers.dino import tiny_overrides


def test_tiny_run_logs_checkpoints_and_exports(manifest: Path, tmp_path: Path) -> None:
    out = pretrain(load_config(None, tiny_overrides(manifest, tmp_path / "run")))
    assert (out / CHECKPOINT_NAME).exists() and (out / "config.yaml").exists()
    with open(out / LOG_NAME) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # 24 images / batch 8 = 3 steps x 2 epochs
    for key in ("loss", "lr", "wd", "teacher_temp", "momentum", "img_per_s", "teacher_entropy", "kl"):
        assert all(r[key] != "" for r in rows), key
    assert float(rows[0]["lr"]) == 0.0 and float(rows[3]["lr"]) > 0.0  # linear warm-up from 0
    meta = json.loads((out / "teacher" / "config.json").read_text())
    assert meta["extra"]["channel_names_seen"] == ["DAPI", "MarkerA", "MarkerB", "Actin", "Mito"]
    assert meta["extra"]["weights"] == "teacher"
    import chada

    model = chada.load_model(out / "teacher")
    emb = model([torch.rand(3, 16, 16), torch.rand(5, 16, 16)])
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    # the teacher moved away from its initial (= student initial) weights, and differs from the student
    student = chada.load_model(out / "student")
    assert any(
        not torch.equal(a, b) for a, b in zip(model.state_dict().values(), student.state_dict().values())
    )
    with pytest.raises(ValueError, match="--resume"):
        Trainer(load_config(None, tiny_overrides(manifest, tmp_path / "run")))
    # init/ holds the weights the run started from: the "same architecture, untrained" baseline.
    from chada.ssl.trainer import build_backbone

    init = chada.load_model(out / "init")
    assert json.loads((out / "init" / "config.json").read_text())["extra"]["weights"] == "init"
    cfg = load_config(None, tiny_overrides(manifest, tmp_path / "run"))
    torch.manual_seed(cfg.run.seed)
    fresh = build_backbone(cfg, ["DAPI", "MarkerA", "MarkerB", "Actin", "Mito"])
    for (k, a), b in zip(init.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert any(not torch.equal(a, b) for a, b in zip(init.state_dict().values(), model.state_dict().values()))


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    s = {f"student.{k}": v.clone() for k, v in trainer.student.state_dict().items()}
    s.update({f"teacher.{k}": v.clone() for k, v in trainer.teacher.state_dict().items()})
    s["center"] = trainer.loss_fn.center.clone()
    return s


def test_resume_matches_uninterrupted_run(manifest: Path, tmp_path: Path) -> None:
    # drop path makes the backbone consume the RNG: the RNG state must be restored too
    extra = ["model.overrides.drop_path_rate=0.2"]
    full = Trainer(load_config(None, tiny_overrides(manifest, tmp_path / "full") + extra))
    full.fit()
    # the interrupted run: stops after 4 of 6 steps (mid-epoch 2, checkpoint at step 4)
    part = Trainer(
        load_config(None, tiny_overrides(manifest, tmp_path / "part") + extra + ["run.max_steps=4"])
    )
    part.fit()
    assert part.global_step == 4 and not (tmp_path / "part" / "teacher").exists()
    resumed = Trainer(load_config(None, tiny_overrides(manifest, tmp_path / "part") + extra), resume=True)
    assert (resumed.global_step, resumed.epoch, resumed.step_in_epoch) == (4, 1, 1)
    resumed.fit()
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    with open(tmp_path / "part" / LOG_NAME) as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == [1, 2, 3, 4, 5, 6]
    with open(tmp_path / "full" / LOG_NAME) as fh, open(tmp_path / "part" / LOG_NAME) as fh2:
        la = [float(r["loss"]) for r in csv.DictReader(fh)]
        lb = [float(r["loss"]) for r in csv.DictReader(fh2)]
    assert la == pytest.approx(lb, abs=1e-6)


def test_cli_pretrain(manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from chada.cli import main

    args = tiny_overrides(manifest, tmp_path / "cli") + ["optim.epochs=1", "data.channel_vocab=auto"]
    assert main(["pretrain", *args, "--print-config"]) == 0
    assert "chada_vit_test" in capsys.readouterr().out
    assert main(["pretrain", *args]) == 0
    assert "finished" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cli" / "teacher" / "config.json").read_text())
    assert meta["config"]["channel_names"] == ["DAPI", "MarkerA", "MarkerB", "Actin", "Mito"]
    assert main(["pretrain", *args, "optim.lrr=1"]) == 2


def test_too_small_dataset_is_a_clear_error(manifest: Path, tmp_path: Path) -> None:
    cfg = load_config(None, tiny_overrides(manifest, tmp_path / "x") + ["optim.batch_size_per_gpu=100"])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        Trainer(cfg)


@pytest.mark.parametrize("name", ["one_channel_vit_test", "inter_channel_vit_test"])
def test_baselines_train_with_the_same_recipe(name: str, manifest: Path, tmp_path: Path) -> None:
    over = tiny_overrides(manifest, tmp_path / name) + [
        f"model.name={name}",
        "optim.epochs=1",
        "run.export_student=false",
    ]
    if name.startswith("inter"):
        over.remove("model.overrides.img_size=16")
    trainer = Trainer(load_config(None, over))
    if name.startswith("one_channel"):
        assert trainer.pool == "mean"  # per-channel CLS averaged: a fixed size on mixed channel counts
    before = [p.clone() for p in trainer.student.backbone.parameters()]
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.student.backbone.parameters()))
    meta = json.loads((tmp_path / name / "teacher" / "config.json").read_text())
    assert meta["arch"] == name.rsplit("_", 1)[0]
