"""``run.compile``: the blocks are compiled in place (names unchanged), and a compile failure is a
one-line message that says what to do, not a traceback (the compiled run itself is exercised by the
rehearsal, tests/ssl/test_rehearsal.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from chada.cli import main
from chada.ssl.config import load_config
from chada.ssl.trainer import Trainer
from tests.helpers.dino import tiny_overrides


def test_compile_keeps_parameter_names(manifest: Path, tmp_path: Path) -> None:
    eager = Trainer(load_config(None, tiny_overrides(manifest, tmp_path / "a")))
    compiled = Trainer(load_config(None, tiny_overrides(manifest, tmp_path / "b") + ["run.compile=true"]))
    assert all(b._compiled_call_impl is not None for b in compiled.student.backbone.blocks)
    assert all(b._compiled_call_impl is not None for b in compiled.teacher.backbone.blocks)
    assert list(eager.student.state_dict()) == list(compiled.student.state_dict())  # checkpoints interchange


def test_compile_failure_is_a_message(manifest: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    def fail(self, views, want_stats):
        raise torch._dynamo.exc.TorchRuntimeError("cannot determine truth value of Relational: 1 < s1")

    monkeypatch.setattr(Trainer, "train_step", fail)
    rc = main(["pretrain", *tiny_overrides(manifest, tmp_path / "run"), "run.compile=true"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "torch.compile failed at step 0 on rank 0" in err and "set run.compile=false" in err
