"""The trainer's optimisation step against a plain DINO step written here from the reference
(Caron et al. 2021, ``main_dino.py`` / ``utils.py``), on the same toy model and the same views.

What the reference step does, in DINO's order: set LR and weight decay from the schedules (weight decay
only on the first parameter group); the teacher sees the 2 global crops, the student every crop; the
loss compares each teacher view with every other student view; backward; per-parameter gradient
clipping; the last layer's gradients dropped during the first ``freeze_last_layer`` epochs; AdamW;
then the teacher follows the student by EMA and the center by EMA of the teacher outputs. Parameter
groups: no decay for ``*.bias`` and 1-D parameters only. LR base = ``lr * global batch / 256``.

Each of these is a deliberate break that makes a test below fail (checked by breaking the trainer).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chada.ssl.config import load_config
from chada.ssl.trainer import Trainer, param_groups
from tests.helpers.dino import dino_cosine_scheduler, dino_teacher_temp, tiny_overrides


def _trainer(manifest: Path, out: Path, extra: list[str] = ()) -> Trainer:
    over = tiny_overrides(manifest, out) + [
        "model.drop_path_rate=0",  # no randomness in the forward: both steps see the same computation
        "optim.warmup_epochs=0",  # LR = base at step 0 (with a warm-up, DINO's first LR is 0)
        "optim.lr=0.2",  # x 8/256 -> 6.25e-3 effective
        "optim.weight_decay=0.3",
        "optim.weight_decay_end=0.4",
        "optim.clip_grad=0.02",  # small enough to clip every parameter at both steps
        "dino.momentum_teacher=0.9",
        "dino.warmup_teacher_temp_epochs=2",
        "augment.n_local=2",
        "run.export_init=false",
        *extra,
    ]
    return Trainer(load_config(None, over))


# ------------------------------------------------------------------------------ the reference
def ref_param_groups(model: torch.nn.Module) -> list[dict]:
    """DINO's utils.get_params_groups."""
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def ref_dino_loss(student_output, teacher_output, center, n_crops, student_temp, temp):
    """DINO's DINOLoss.forward (2 global crops)."""
    student_out = (student_output / student_temp).chunk(n_crops)
    teacher_out = F.softmax((teacher_output - center) / temp, dim=-1).detach().chunk(2)
    total_loss, n_loss_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total_loss += torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


def ref_clip_gradients(model: torch.nn.Module, clip: float) -> None:
    """DINO's utils.clip_gradients."""
    for p in model.parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


def ref_cancel_last_layer(epoch: int, model: torch.nn.Module, freeze_last_layer: int) -> None:
    """DINO's utils.cancel_gradients_last_layer."""
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


class ReferenceDINO:
    """DINO's training step, on copies of the trainer's initial student and teacher."""

    def __init__(self, trainer: Trainer) -> None:
        cfg = trainer.cfg
        self.cfg, self.niter = cfg, trainer.steps_per_epoch
        self.student = copy.deepcopy(trainer.student).train()
        self.teacher = copy.deepcopy(trainer.teacher).eval()  # DINO's teacher has no drop path
        self.center = torch.zeros(1, cfg.head.out_dim)
        self.optimizer = torch.optim.AdamW(ref_param_groups(self.student), betas=cfg.optim.betas)
        o, d, E = cfg.optim, cfg.dino, cfg.optim.epochs
        self.lr = dino_cosine_scheduler(
            o.lr * o.batch_size_per_gpu * 1 / 256.0, o.min_lr, E, self.niter, int(o.warmup_epochs)
        )
        self.wd = dino_cosine_scheduler(o.weight_decay, o.weight_decay_end, E, self.niter)
        self.momentum = dino_cosine_scheduler(d.momentum_teacher, 1, E, self.niter)
        self.temp = dino_teacher_temp(
            d.warmup_teacher_temp, d.teacher_temp, int(d.warmup_teacher_temp_epochs), E
        )

    def step(self, it: int, images: list) -> float:
        epoch = it // self.niter
        for i, param_group in enumerate(self.optimizer.param_groups):
            param_group["lr"] = self.lr[it]
            if i == 0:
                param_group["weight_decay"] = self.wd[it]
        teacher_output = self.teacher(images[:2])  # only the 2 global views pass through the teacher
        student_output = self.student(images)
        loss = ref_dino_loss(
            student_output,
            teacher_output,
            self.center,
            len(images),
            self.cfg.dino.student_temp,
            self.temp[epoch],
        )
        self.optimizer.zero_grad()
        loss.backward()
        ref_clip_gradients(self.student, self.cfg.optim.clip_grad)
        ref_cancel_last_layer(epoch, self.student, int(self.cfg.dino.freeze_last_layer_epochs))
        self.optimizer.step()
        with torch.no_grad():
            m = self.momentum[it]
            for param_q, param_k in zip(self.student.parameters(), self.teacher.parameters()):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
            batch_center = teacher_output.sum(dim=0, keepdim=True) / len(teacher_output)
            self.center = self.center * self.cfg.dino.center_momentum + batch_center * (
                1 - self.cfg.dino.center_momentum
            )
        return float(loss.detach())


def _batches(trainer: Trainer, n: int) -> list[list]:
    it = trainer._loader(0, 0)
    return [next(it)["batches"] for _ in range(n)]


def _snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {**{f"student.{n}": p.detach().clone() for n, p in trainer.student.named_parameters()},
            **{f"teacher.{n}": p.detach().clone() for n, p in trainer.teacher.named_parameters()}}  # fmt: skip


def _compare(trainer: Trainer, ref: ReferenceDINO, start: dict[str, torch.Tensor], rel: float = 1e-3) -> None:
    """Every parameter equals the reference's up to ``rel`` of how far it moved.

    Not a plain atol: AdamW divides by sqrt(v) + 1e-8, so for the few gradient entries near 1e-8 the
    float round-off of two different (equally correct) loss implementations changes the update by a
    visible fraction of the LR. Those entries weigh nothing in the norm of the change; every break
    listed in the module docstring changes whole tensors, by far more than 1e-3 of their update.
    """
    ours = _snapshot(trainer)
    theirs = {**{f"student.{n}": p for n, p in ref.student.named_parameters()},
              **{f"teacher.{n}": p for n, p in ref.teacher.named_parameters()}}  # fmt: skip
    for k, a in ours.items():
        b = theirs[k].detach()
        moved = float((b - start[k]).norm())
        off = float((a - b).norm())
        assert off <= rel * moved + 1e-7, (
            f"{k}: off the reference by {off:.3g} for a reference change of {moved:.3g}"
        )
    torch.testing.assert_close(trainer.loss_fn.center, ref.center, atol=1e-6, rtol=0, msg="center")


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("freeze", [1, 0])
def test_two_steps_equal_the_reference_dino_step(manifest: Path, tmp_path: Path, freeze: int) -> None:
    """Catches: teacher fed every crop, no last-layer freeze (or a freeze that never ends), the EMA
    swapped or missing, no gradient clipping, LR not scaled by batch/256, other weight-decay groups."""
    trainer = _trainer(manifest, tmp_path / "run", [f"dino.freeze_last_layer_epochs={freeze}"])
    ref = ReferenceDINO(trainer)
    trainer.student.train()
    trainer._teacher_mode()
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    start = _snapshot(trainer)
    for it, views in enumerate(_batches(trainer, 2)):
        res = trainer.train_step(views, want_stats=False)
        trainer.global_step += 1
        want = ref.step(it, views)
        assert float(res["loss"]) == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert res["lr"] == pytest.approx(ref.lr[it]) and res["wd"] == pytest.approx(ref.wd[it])
        assert res["teacher_temp"] == pytest.approx(ref.temp[it // ref.niter])
        _compare(trainer, ref, start)
    last = "head.last_layer.weight_v"
    assert torch.equal(trainer.student.state_dict()[last], before[last]) == (freeze == 1)
    # the toy must make every listed break visible: the teacher moved, clipping was active
    assert not torch.equal(trainer.teacher.state_dict()["backbone.pos_embed"], before["backbone.pos_embed"])


def test_weight_decay_groups_are_dinos(manifest: Path, tmp_path: Path) -> None:
    trainer = _trainer(manifest, tmp_path / "run")
    decayed = {id(p) for p in trainer.optimizer.param_groups[0]["params"]}
    names = {n for n, p in trainer.student.named_parameters() if id(p) in decayed}
    for n in (
        "backbone.pos_embed",
        "backbone.cls_token",
        "backbone.channel_embed",
        "head.last_layer.weight_v",
    ):
        assert n in names, n
    for n, p in trainer.student.named_parameters():
        if p.requires_grad and (n.endswith(".bias") or p.ndim == 1):
            assert n not in names, n
    assert trainer.optimizer.param_groups[1]["weight_decay"] == 0.0
    # the option kept for the quickstart's measured runs also leaves the embeddings undecayed
    legacy = param_groups(trainer.student, "dino_and_embeddings", trainer.student.backbone.no_weight_decay())
    legacy_names = {
        n for n, p in trainer.student.named_parameters() if any(p is q for q in legacy[0]["params"])
    }
    assert names - legacy_names == {"backbone.pos_embed", "backbone.cls_token", "backbone.channel_embed"}


def test_every_step_uses_dinos_schedules(manifest: Path, tmp_path: Path) -> None:
    """LR (scaled by batch/256, linspace warm-up), weight decay, momentum and per-epoch teacher temperature
    of every step of a run equal DINO's arrays."""
    trainer = _trainer(manifest, tmp_path / "run", ["optim.warmup_epochs=1", "optim.epochs=3"])
    ref = ReferenceDINO(trainer)
    n = trainer.total_steps
    assert n == 3 * ref.niter and len(ref.lr) == n
    np.testing.assert_allclose([trainer.lr_schedule(i) for i in range(n)], ref.lr, rtol=1e-12)
    np.testing.assert_allclose([trainer.wd_schedule(i) for i in range(n)], ref.wd, rtol=1e-12)
    np.testing.assert_allclose([trainer.momentum_schedule(i) for i in range(n)], ref.momentum, rtol=1e-12)
    np.testing.assert_allclose(
        [trainer.teacher_temp(i) for i in range(n)], [ref.temp[i // ref.niter] for i in range(n)]
    )
    assert trainer.lr_schedule(ref.niter - 1) == pytest.approx(trainer.base_lr)  # warm-up ends AT base


def test_teacher_has_no_drop_path_but_keeps_head_batchnorm_statistics(manifest: Path, tmp_path: Path) -> None:
    trainer = _trainer(manifest, tmp_path / "run", ["head.use_bn=true", "model.drop_path_rate=0.5"])
    trainer.student.train()
    trainer._teacher_mode()
    assert not trainer.teacher.backbone.training and all(
        not m.training for m in trainer.teacher.backbone.modules()
    )
    bns = [m for m in trainer.teacher.head.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert bns and all(m.training for m in bns)
    views = _batches(trainer, 1)[0]
    with torch.no_grad():
        a, b = trainer.teacher(views[:2]), trainer.teacher(views[:2])
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # no drop path: the same crops give the same output
    assert float(bns[0].num_batches_tracked) == 2  # batch statistics, as in DINO (teacher never in eval)
    with torch.no_grad():
        s1, s2 = trainer.student(views[:2]), trainer.student(views[:2])
    assert not torch.equal(s1, s2)  # the student does drop paths


def test_drop_path_default_is_dinos(manifest: Path, tmp_path: Path) -> None:
    cfg = load_config(None, tiny_overrides(manifest, tmp_path / "x"))
    assert cfg.model.drop_path_rate == 0.1
    trainer = Trainer(cfg)
    assert trainer.student.backbone.config.drop_path_rate == 0.1
    cfg2 = load_config(
        None, tiny_overrides(manifest, tmp_path / "y") + ["model.overrides.drop_path_rate=0.3"]
    )
    assert Trainer(cfg2).student.backbone.config.drop_path_rate == 0.3  # overrides win
