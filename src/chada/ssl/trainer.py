"""DINO training loop: one process on CPU, or N processes under ``torchrun`` with DDP.

The parts, as dinov2 splits its ``SSLMetaArch`` from ``do_train``: :mod:`~chada.ssl.train_data`
(datasets, samplers, the batches of an epoch), :mod:`~chada.ssl.build` (student/teacher, loss,
optimizer, compile, schedules), :mod:`~chada.ssl.checkpoint` (the file, every rank's RNG state),
:mod:`~chada.ssl.run_log` (CSV, TensorBoard), :mod:`~chada.ssl.resume_rules` (which config changes a
resume accepts), :mod:`~chada.ssl.export`; here: the step and the loop.

A resume gives the weights of an uninterrupted run: schedules are pure functions of the global step,
data order and augmentations are seeded per epoch and sample, the checkpoint holds every rank's RNGs.
It refuses a config that changes the result unless the changed keys are allowed by name, and a
finished run's ``teacher/`` is never retrained or rewritten by a plain ``--resume``.

The loop does not wait for the device at every step: a non-finite loss is recorded on the device and
checked (one host sync) at the steps that log or save, so a run that diverges stops before a
checkpoint or an export holds its weights, naming the first bad step.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from chada.ssl import checkpoint as ckpt
from chada.ssl.build import (
    CompileError,
    build_backbone,
    build_modules,
    build_schedules,
    clip_gradients_per_parameter,
    compile_blocks,
    param_groups,
    resolve_pool,
    set_threads,
    teacher_mode,
)
from chada.ssl.checkpoint import CHECKPOINT_NAME, load_checkpoint
from chada.ssl.config import PretrainConfig, as_config, config_to_dict, save_config
from chada.ssl.dino import collapse_kind
from chada.ssl.distributed import DistInfo, init_distributed
from chada.ssl.export import export_backbones, export_extra
from chada.ssl.resume_rules import SAFE_TO_CHANGE_ON_RESUME, check_resume_config, config_changes
from chada.ssl.run_log import LOG_NAME, LossWatch, RunLog, collapse_message
from chada.ssl.train_data import (
    EpochSeededDataset,
    ResumableDistributedSampler,
    build_train_data,
    epoch_batches,
    sum_counts_over_ranks,
)

__all__ = [  # the loop, and the names that lived here before the split
    "Trainer", "pretrain", "CompileError", "build_backbone", "resolve_pool", "param_groups", "compile_blocks",
    "EpochSeededDataset", "ResumableDistributedSampler", "CHECKPOINT_NAME", "LOG_NAME", "SAFE_TO_CHANGE_ON_RESUME",
    "config_changes", "load_checkpoint",
]  # fmt: skip

log = logging.getLogger(__name__)


class Trainer:
    """DINO pretraining of any registered backbone.

    ``Trainer(cfg).fit()`` trains, checkpoints to ``cfg.run.output_dir/checkpoint.pt``, logs to
    ``log.csv`` (+ TensorBoard), and at the end exports ``teacher/`` (and ``student/``) with
    ``save_pretrained``. Attributes after construction: ``student`` / ``teacher`` (un-wrapped
    :class:`MultiCropWrapper`), ``loss_fn``, ``optimizer``, ``global_step``.
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        resume: bool = False,
        dist_info: DistInfo | None = None,
        allow_changes: Sequence[str] = (),
    ) -> None:
        """Build data, modules, optimizer and schedules; with ``resume``, load ``checkpoint.pt``.

        ``allow_changes``: config keys (and ``"world_size"``) that may differ from the checkpoint's on
        resume although they change the result; any other difference is a ValueError naming the keys.
        """
        self.cfg = cfg.validate()
        self.dist = dist_info or init_distributed(cfg.run.device)
        self.device = self.dist.device
        self.out_dir = Path(cfg.run.output_dir)
        set_threads(cfg.run.threads, self.device, self.dist.world_size)
        ckpt_path = self.out_dir / CHECKPOINT_NAME
        ckpt.check_output_dir(self.out_dir, resume)
        # Read and check the checkpoint before any expensive setup (data caching, compilation).
        state = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
        if state is not None:
            check_resume_config(
                ckpt_path, state, self.cfg, self.dist.world_size, allow_changes, self.dist.is_main
            )
        self._set_data()
        m = build_modules(cfg, self.channel_vocab, self.device)
        self.student, self.teacher, self.loss_fn, self.optimizer = m.student, m.teacher, m.loss_fn, m.optimizer  # fmt: skip
        self.pool, self._student_params, self._ema_pairs = m.pool, m.student_params, m.ema_pairs
        self._last_layer_params = m.last_layer_params
        self.student_fwd: nn.Module = self.student
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student_fwd = DDP(
                self.student, device_ids=ids, find_unused_parameters=cfg.run.find_unused_parameters
            )
        self.teacher_fwd: nn.Module = self.teacher
        self._set_schedules()
        self.global_step, self.epoch, self.step_in_epoch = 0, 0, 0
        self._loss_watch = LossWatch(self.device)
        if state is not None:
            self._load_state(ckpt_path, state)
        else:
            if resume and self.dist.is_main:
                log.warning("no checkpoint in %s: starting from scratch", self.out_dir)
            # Per-rank stream for stochastic layers (drop path); restored from the checkpoint on resume.
            torch.manual_seed(ckpt.rank_seed(cfg.run.seed, self.dist.rank))

    # ------------------------------------------------ data, schedules, checkpoint (built in build, train_data)
    def _set_data(self) -> None:
        d = build_train_data(
            self.cfg, self.dist.world_size, self.dist.rank, self.cfg.run.progress and self.dist.is_main
        )
        self.augment, self.dataset, self.sampler, self.collate = d.augment, d.dataset, d.sampler, d.collate
        self.steps_per_epoch = d.steps_per_epoch
        self.channel_counts: dict[str, int] = d.channel_counts
        self._learn_channels = d.learn_channels
        self.channel_vocab: list[str] | None = d.channel_vocab
        self.total_steps = self.cfg.optim.epochs * self.steps_per_epoch
        self._data = d

    def _loader(self, epoch: int, start_step: int) -> Iterator[dict[str, Any]]:
        pin = self.cfg.data.pin_memory and self.device.type == "cuda"
        return epoch_batches(self.cfg, self._data, epoch, start_step, pin, self.dist.rank)

    def _set_schedules(self) -> None:
        s = build_schedules(self.cfg, self.steps_per_epoch, self.total_steps, self.dist.world_size)
        self.base_lr, self.lr_schedule, self.wd_schedule = s.base_lr, s.lr, s.wd
        self.momentum_schedule, self.temp_schedule = s.momentum, s.temp
        self.freeze_last_layer_steps = s.freeze_last_layer_steps
        self._schedules = s

    def teacher_temp(self, step: int) -> float:
        """The teacher temperature used at global ``step``."""
        return self._schedules.teacher_temp(step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dino_loss": self.loss_fn.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "world_size": self.dist.world_size,
            "config": config_to_dict(self.cfg),
            "channel_counts": dict(self.channel_counts),
            "format": ckpt.CHECKPOINT_FORMAT,
        }

    def save_checkpoint(self) -> Path | None:
        """Every rank calls this (RNG states are gathered, ``state["rng"][rank]``); rank 0 writes atomically."""
        state = self.state_dict() if self.dist.is_main else {}
        path = self.out_dir / CHECKPOINT_NAME
        return ckpt.write_checkpoint(path, state, self.device, self.dist.distributed, self.dist.is_main)

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        """Restore modules, optimizer, center, position and this rank's RNG from a loaded checkpoint."""
        targets = {"student": self.student, "teacher": self.teacher, "optimizer": self.optimizer,
                   "dino_loss": self.loss_fn}  # fmt: skip
        ckpt.load_module_states(path, state, targets)
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        # Names learned while streaming were saved by rank 0; the other ranks' share is lost with a kill
        # (the names are what matters; counts of images seen are indicative).
        keep_saved = self.dist.is_main or not self._learn_channels
        if state.get("channel_counts") and not self.channel_counts and keep_saved:
            self.channel_counts = dict(state["channel_counts"])
        ckpt.restore_rank_rng(state.get("rng") or [], self.dist.rank, self.cfg.run.seed, self.device)

    # ------------------------------------------------------------------- training
    def _autocast(self) -> Any:
        if self.cfg.run.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self, views: list[Any], want_stats: bool) -> dict[str, Any]:
        """One optimisation step on a list of view ChannelBatches (globals first).

        No host sync: a non-finite loss is recorded on the device; :meth:`check_finite` raises on it.
        """
        it = self.global_step
        lr, wd = self.lr_schedule(it), self.wd_schedule(it)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group["apply_wd"]:
                group["weight_decay"] = wd
        temp = self.teacher_temp(it)
        n_global = self.cfg.augment.n_global
        with self._autocast():
            with torch.no_grad():
                teacher_out = self.teacher_fwd(views[:n_global])
            student_out = self.student_fwd(views)
        stats = self.loss_fn.stats(student_out.detach(), teacher_out, temp) if want_stats else {}
        loss = self.loss_fn(student_out, teacher_out, temp)
        self._loss_watch.record(loss, it)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.clip_grad > 0:
            clip_gradients_per_parameter(self._student_params, self.cfg.optim.clip_grad)
        if it < self.freeze_last_layer_steps:
            for p in self._last_layer_params:
                p.grad = None
        self.optimizer.step()
        m = self.momentum_schedule(it)
        with torch.no_grad():
            t_params = [pt for pt, _ in self._ema_pairs]
            s_params = [ps.detach() for _, ps in self._ema_pairs]
            torch._foreach_mul_(t_params, m)
            torch._foreach_add_(t_params, s_params, alpha=1.0 - m)
        out = {"loss": loss.detach(), "lr": lr, "wd": wd, "teacher_temp": temp, "momentum": m}
        out.update(stats)
        return out

    def check_finite(self) -> None:
        """Raise FloatingPointError if a step since the start had a non-finite loss (one host sync)."""
        self._loss_watch.check()

    def fit(self) -> Path:
        """Train to the end (or ``run.max_steps``); return the output folder.

        A run that already finished (its checkpoint at the last step and ``teacher/`` written) is left
        as it is: nothing is retrained or rewritten.
        """
        cfg = self.cfg
        if self.global_step >= self.total_steps and (self.out_dir / "teacher" / "config.json").exists():
            if self.dist.is_main:
                log.warning("%s already finished (%d/%d steps): %s is kept as it is",
                            self.out_dir, self.global_step, self.total_steps, self.out_dir / "teacher")  # fmt: skip
            return self.out_dir
        run_log = None
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
            if cfg.run.export_init and self.global_step == 0:
                # The untrained baseline with exactly this run's architecture, init and seed.
                self.export(which=("init",))
            run_log = RunLog(self.out_dir, self.global_step, cfg.run.tensorboard)
        stop_at = self.total_steps if cfg.run.max_steps is None else min(cfg.run.max_steps, self.total_steps)
        progress = None
        if self.dist.is_main and cfg.run.progress:
            from tqdm.auto import tqdm

            progress = tqdm(
                total=self.total_steps, initial=self.global_step, desc="dino", unit="step", dynamic_ncols=True
            )
        self.student.train()
        self._teacher_mode()
        # A near-uniform teacher is normal while the LR and teacher temperature warm up (the CSV's
        # collapse column records it anyway), so the warning waits for the end of warm-up, then repeats
        # at most every 10 epochs while the collapse lasts.
        self._warn_from = max(cfg.optim.warmup_epochs, cfg.dino.warmup_teacher_temp_epochs,
                              cfg.dino.freeze_last_layer_epochs)  # fmt: skip
        self._t_start = self._t_last = time.perf_counter()
        self._n_since = 0
        try:
            while self.global_step < stop_at:
                for batch in self._loader(self.epoch, self.step_in_epoch):
                    self._one_step(batch, stop_at, run_log, progress)
                    if self.global_step >= stop_at:
                        break
        finally:
            if progress is not None:
                progress.close()
            if run_log is not None:
                run_log.close()
        if self.global_step >= self.total_steps:
            self._gather_channel_counts()
            if self.dist.is_main:
                self.export()
        if self.dist.distributed:
            dist.barrier()
        return self.out_dir

    def _one_step(self, batch: dict[str, Any], stop_at: int, run_log: RunLog | None, progress: Any) -> None:
        """Train on one batch, then log, check and checkpoint at their intervals."""
        cfg = self.cfg
        views = [b.to(self.device, non_blocking=True) for b in batch["batches"]]
        if self._learn_channels:  # streaming without names in the index: learn them
            for names in batch["channel_names"]:
                for n in names:
                    self.channel_counts[n] = self.channel_counts.get(n, 0) + 1
        log_now = (self.global_step + 1) % cfg.run.log_every_steps == 0 or self.global_step + 1 == stop_at
        res = self._step_or_explain(views, want_stats=log_now and self.dist.is_main)
        self.global_step += 1
        self.step_in_epoch += 1
        self._n_since += 1
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0
        save_now = self.global_step % cfg.run.save_every_steps == 0 or self.global_step == stop_at
        if log_now or save_now:  # the only host syncs of a step: never log or save a diverged run
            self.check_finite()
        if log_now:
            self._log_step(res, run_log, progress)
        if progress is not None:
            progress.update(1)
        if save_now:
            self.save_checkpoint()

    def _log_step(self, res: dict[str, Any], run_log: RunLog | None, progress: Any) -> None:
        """The mean loss over ranks, a row of ``log.csv``, the collapse warning, the progress bar."""
        loss = res["loss"].float()
        if self.dist.distributed:
            dist.all_reduce(loss)
            loss = loss / self.dist.world_size
        now = time.perf_counter()
        if self.dist.is_main:
            assert run_log is not None
            global_batch = self.cfg.optim.batch_size_per_gpu * self.dist.world_size
            kind = collapse_kind(res) if "kl" in res else None
            row = {k: v for k, v in res.items() if k != "loss"}
            row.update(
                step=self.global_step, epoch=round(self.global_step / self.steps_per_epoch, 4),
                loss=float(loss), img_per_s=self._n_since * global_batch / max(now - self._t_last, 1e-9),
                collapse=kind or "", elapsed_s=round(now - self._t_start, 2),
            )  # fmt: skip
            run_log.write(row)
            if kind and self.epoch >= self._warn_from:
                self._warn_from = self.epoch + 10
                msg = collapse_message(self.global_step, kind, res)
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
            if progress is not None:
                progress.set_postfix(loss=f"{float(loss):.4f}", lr=f"{res['lr']:.2e}",
                                     img_s=f"{row['img_per_s']:.1f}")  # fmt: skip
        self._t_last, self._n_since = now, 0

    def _teacher_mode(self) -> None:
        teacher_mode(self.teacher)

    def _step_or_explain(self, views: list[Any], want_stats: bool) -> dict[str, Any]:
        """``train_step``, with a compile failure turned into a message that says what to do."""
        if not self.cfg.run.compile:
            return self.train_step(views, want_stats)
        import torch._dynamo.exc as dynamo_exc

        try:
            return self.train_step(views, want_stats)
        except dynamo_exc.TorchDynamoException as exc:  # InductorError included
            raise CompileError.of(exc, self.global_step, self.dist.rank) from exc

    def _gather_channel_counts(self) -> None:
        """Streaming runs without names in their index learn them per rank: sum every rank's counts
        (images seen, repeats included) before the export."""
        if self.dist.distributed and self._learn_channels:
            self.channel_counts = sum_counts_over_ranks(self.channel_counts, self.dist.world_size)

    def export(self, which: tuple[str, ...] | None = None) -> Path:
        """Write ``teacher/`` (and ``student/``) with ``save_pretrained``; returns the first folder written.

        ``which=("init",)`` writes ``init/``: the teacher backbone as it is now, called at step 0 so it
        holds the weights the run started from (the "same architecture, untrained" baseline).
        """
        if which is None:
            which = ("teacher", "student") if self.cfg.run.export_student else ("teacher",)
        extra = export_extra(self.cfg, self.channel_counts, self.channel_vocab, self.pool, self.global_step)
        wrappers = {name: self.student if name == "student" else self.teacher for name in which}
        return export_backbones(self.out_dir, {name: w.backbone for name, w in wrappers.items()}, extra)


def pretrain(
    config: PretrainConfig | dict[str, Any] | str | os.PathLike,
    overrides: list[str] | None = None,
    resume: bool = False,
    allow_changes: Sequence[str] = (),
) -> Path:
    """Run DINO pretraining and return the output folder (``teacher/`` inside once finished).

    Args:
        config: a :class:`PretrainConfig`, a nested dict, or a YAML file path.
        overrides: ``section.key=value`` strings applied on top.
        resume: continue from ``output_dir/checkpoint.pt`` if it exists.
        allow_changes: config keys that may differ from the checkpoint's although they change the result.
    """
    cfg = as_config(config if not isinstance(config, os.PathLike) else Path(config), overrides)
    return Trainer(cfg, resume=resume, allow_changes=allow_changes).fit()
