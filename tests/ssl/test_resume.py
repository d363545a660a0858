"""Resume safety: exact resume on shards, checkpoints loaded with weights_only (a malicious pickle runs
nothing), corrupt checkpoints, refused config changes, finished runs left alone, RNG states on CPU,
channel names recorded in teacher/ and init/."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from chada.cli import main
from chada.ssl.config import load_config
from chada.ssl.trainer import CHECKPOINT_NAME, LOG_NAME, Trainer, load_checkpoint
from tests.helpers.dino import tiny_overrides

NAMES = ["DAPI", "MarkerA", "MarkerB", "Actin", "Mito"]


@pytest.fixture(scope="module")
def finished_run(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    Trainer(load_config(None, tiny_overrides(manifest, out) + ["optim.epochs=1"])).fit()
    return out


def _shard_overrides(manifest: Path, shards: Path, out: Path, workers: int = 2) -> list[str]:
    over = [o for o in tiny_overrides(manifest, out) if not o.startswith("data.")]
    return over + [
        f"data.shards={shards}", "data.shard_samples_per_epoch=24", "data.shard_shuffle=7", f"data.num_workers={workers}",
        "model.drop_path_rate=0.2",  # the backbone draws from the RNG: its state must be restored too
    ]  # fmt: skip


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    s = {f"student.{k}": v.clone() for k, v in trainer.student.state_dict().items()}
    s.update({f"teacher.{k}": v.clone() for k, v in trainer.teacher.state_dict().items()})
    s["center"] = trainer.loss_fn.center.clone()
    return s


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_run_stopped_half_way_and_resumed_equals_uninterrupted(
    manifest: Path, tmp_path: Path, workers: int
) -> None:
    from chada.data.shards import write_shards

    shards = write_shards(
        manifest, tmp_path / "shards", shard_size=5
    )  # 5 shards: 2 workers read different ones
    full = Trainer(load_config(None, _shard_overrides(manifest, shards, tmp_path / "full", workers)))
    full.fit()
    # stops after 4 of 6 steps: mid-epoch 2 (3 steps per epoch), mid-shard
    over = _shard_overrides(manifest, shards, tmp_path / "part", workers)
    part = Trainer(load_config(None, over + ["run.max_steps=4"]))
    part.fit()
    assert part.global_step == 4 and not (tmp_path / "part" / "teacher").exists()
    resumed = Trainer(load_config(None, over), resume=True)
    assert (resumed.global_step, resumed.epoch, resumed.step_in_epoch) == (4, 1, 1)
    resumed.fit()
    a, b = _weights(full), _weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with open(tmp_path / "full" / LOG_NAME) as fa, open(tmp_path / "part" / LOG_NAME) as fb:
        assert [r["loss"] for r in csv.DictReader(fa)] == [r["loss"] for r in csv.DictReader(fb)]
    # the names come from shards.json, so init/ (step 0) records them as well as teacher/
    for folder in ("init", "teacher"):
        extra = json.loads((tmp_path / "full" / folder / "config.json").read_text())["extra"]
        assert extra["channel_names_seen"] == NAMES, folder


def test_channel_names_recorded_for_a_positional_manifest_run(finished_run: Path) -> None:
    for folder in ("init", "teacher"):
        extra = json.loads((finished_run / folder / "config.json").read_text())["extra"]
        assert extra["channel_names_seen"] == NAMES and extra["channel_vocab"] is None, folder
        assert extra["channel_slots"] == "position"


def _bad_checkpoint_cli(manifest: Path, run: Path, capsys: pytest.CaptureFixture) -> str:
    rc = main(["pretrain", *tiny_overrides(manifest, run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert str(run / CHECKPOINT_NAME) in err
    return err


def test_malicious_pickle_checkpoint_runs_nothing(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "chada-dino/2", "student": Payload()}, run / CHECKPOINT_NAME)
    err = _bad_checkpoint_cli(manifest, run, capsys)
    assert "cannot be read" in err and "delete it" in err
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not_ours"])
def test_corrupt_checkpoint_is_a_clean_error(
    damage: str, finished_run: Path, manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    good = (finished_run / CHECKPOINT_NAME).read_bytes()
    data = {
        "truncate": good[: len(good) // 2], "garbage": os.urandom(4096), "empty": b"",
        "not_ours": b"",
    }[damage]  # fmt: skip
    if damage == "not_ours":
        torch.save({"weights": torch.zeros(3)}, run / CHECKPOINT_NAME)
    else:
        (run / CHECKPOINT_NAME).write_bytes(data)
    with pytest.raises(ValueError, match="delete it") as info:
        load_checkpoint(run / CHECKPOINT_NAME)
    assert str(run / CHECKPOINT_NAME) in str(info.value)
    _bad_checkpoint_cli(manifest, run, capsys)


def test_resume_refuses_changes_that_change_the_result(
    finished_run: Path, manifest: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    base = tiny_overrides(manifest, run) + ["optim.epochs=1"]
    with pytest.raises(ValueError) as info:
        Trainer(load_config(None, base + ["optim.lr=0.01", "optim.epochs=2"]), resume=True)
    msg = str(info.value)
    assert "optim.lr: 0.05 -> 0.01" in msg and "optim.epochs: 1 -> 2" in msg
    assert "--resume-allow-changes optim.epochs,optim.lr" in msg
    # the CLI prints it as a clean error
    assert main(["pretrain", *base, "optim.lr=0.01", "--resume"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    # safe keys change silently; an unknown allowed key is an error
    Trainer(
        load_config(None, base + ["run.log_every_steps=3", "run.progress=true", "data.num_workers=1"]),
        resume=True,
    )
    with pytest.raises(ValueError, match="unknown key"):
        Trainer(load_config(None, base), resume=True, allow_changes=["optim.lrr"])
    # an explicit allowance trains on: 1 more epoch, and teacher/ is rewritten with it
    before = (run / "teacher" / "model.safetensors").read_bytes()
    assert (
        main(["pretrain", *base, "optim.epochs=2", "--resume", "--resume-allow-changes", "optim.epochs"]) == 0
    )
    assert "finished" in capsys.readouterr().out
    assert json.loads((run / "teacher" / "config.json").read_text())["extra"]["global_step"] == 6
    assert (run / "teacher" / "model.safetensors").read_bytes() != before


def test_finished_run_is_not_retrained_or_rewritten(
    finished_run: Path, manifest: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    teacher = run / "teacher" / "model.safetensors"
    os.utime(teacher, (1_000_000, 1_000_000))
    trainer = Trainer(load_config(None, tiny_overrides(manifest, run) + ["optim.epochs=1"]), resume=True)
    before = _weights(trainer)
    trainer.fit()
    assert teacher.stat().st_mtime == 1_000_000
    after = _weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # without its checkpoint, a new run in that folder would overwrite the teacher: refused
    (run / CHECKPOINT_NAME).unlink()
    for resume in (False, True):
        with pytest.raises(ValueError, match="would overwrite it"):
            Trainer(load_config(None, tiny_overrides(manifest, run) + ["optim.epochs=1"]), resume=resume)


def test_resume_gives_cpu_rng_byte_tensors_whatever_the_device(
    finished_run: Path, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU run, mapping the checkpoint to the device would hand CUDA tensors to set_rng_state
    (which needs CPU ByteTensors). Simulated: CUDA "available", a CUDA RNG state in the checkpoint (the
    old every-visible-GPU list and the per-rank entry), and a torch.load that refuses any map_location
    but CPU; the rank's own device is cuda:0 (the Trainer itself runs on CPU here)."""
    from chada.ssl.checkpoint import restore_rank_rng

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    for r in state["rng"]:
        r["cuda"] = [torch.get_rng_state()[:16].clone()]
    torch.save(state, run / CHECKPOINT_NAME)
    seen: dict[str, list] = {"torch": [], "cuda": []}
    real_load = torch.load

    def load(*args, **kwargs):
        # A map_location other than CPU would put the RNG tensors on the GPU: refuse it here.
        assert kwargs.get("map_location") == "cpu", f"checkpoint mapped to {kwargs.get('map_location')}"
        return real_load(*args, **kwargs)

    cfg = load_config(None, tiny_overrides(manifest, run) + ["optim.epochs=1"])
    monkeypatch.setattr(torch, "load", load)
    monkeypatch.setattr(torch, "set_rng_state", lambda t: seen["torch"].append(t))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda t, device="cuda": seen["cuda"].append(t))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    Trainer(cfg, resume=True)
    loaded = load_checkpoint(run / CHECKPOINT_NAME)
    restore_rank_rng(loaded["rng"], 0, cfg.run.seed, torch.device("cuda", 0))  # the old list form
    loaded["rng"][0]["cuda"] = {"device": 0, "state": loaded["rng"][0]["cuda"][0]}
    restore_rank_rng(loaded["rng"], 0, cfg.run.seed, torch.device("cuda", 0))  # the per-rank form
    assert seen["torch"] and len(seen["cuda"]) == 2
    for t in seen["torch"] + seen["cuda"]:
        assert t.device.type == "cpu" and t.dtype == torch.uint8
