"""DINO training loop: one process on CPU, or N processes under ``torchrun`` with DDP.

Reproducibility (what makes ``resume`` give the same weights as an uninterrupted run):

- every schedule (LR, weight decay, teacher momentum, teacher temperature, last-layer freeze) is a
  pure function of the global step (:mod:`chada.ssl.schedules`);
- the data order of epoch ``e`` is the permutation of :class:`torch.utils.data.DistributedSampler`
  seeded with ``seed + e`` (one replica when single-process); a resumed epoch skips the samples
  already consumed (:class:`ResumableDistributedSampler`);
- the augmentation of sample ``i`` in epoch ``e`` is drawn from torch's RNG re-seeded with
  ``(seed, e, i)`` inside a forked RNG (:class:`EpochSeededDataset`), so it depends neither on the
  number of DataLoader workers nor on where a run was interrupted;
- the checkpoint holds student, teacher, optimizer, DINO center, epoch/step, and every rank's RNG states.

Streaming shards (``data.shards``) have no index: each rank draws exactly ``steps_per_epoch`` batches
per epoch from its shards (cycling them), a resumed epoch re-reads and drops the consumed batches.
Their augmentations come from per-worker seeds ``(seed, epoch, rank, worker)``, so a resumed shard run
is exact only with ``data.num_workers >= 1`` (with 0 workers the augmentation shares the main RNG).
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from chada.io import atomic_write_bytes
from chada.models.hub import save_pretrained
from chada.models.registry import create_model, get_arch, model_spec
from chada.ssl.channel_sampling import ChannelSampler, ChannelSamplingCollate
from chada.ssl.config import PretrainConfig, config_from_dict, config_to_dict, load_config, save_config
from chada.ssl.dino import DINOHead, DINOLoss, MultiCropWrapper, backbone_dim, collapse_kind
from chada.ssl.distributed import DistInfo, init_distributed
from chada.ssl.schedules import CosineSchedule, LinearWarmupConstant

__all__ = [
    "Trainer",
    "pretrain",
    "build_backbone",
    "resolve_pool",
    "EpochSeededDataset",
    "ResumableDistributedSampler",
    "CHECKPOINT_NAME",
    "LOG_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.csv"
LOG_FIELDS = [
    "step", "epoch", "loss", "lr", "wd", "teacher_temp", "momentum", "img_per_s",
    "teacher_entropy", "teacher_batch_entropy", "kl", "collapse", "elapsed_s",
]  # fmt: skip


# ----------------------------------------------------------------------------------------- data
class EpochSeededDataset(Dataset):
    """Wraps a map-style dataset so that item ``i`` of epoch ``e`` is drawn with torch's RNG seeded by
    ``(seed, e, i)``; the caller's RNG stream is left untouched (forked)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class ResumableDistributedSampler(DistributedSampler):
    """:class:`DistributedSampler` that can start an epoch part-way (``start_index`` samples skipped)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int) -> None:
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def _manifest_channel_names(frame: Any) -> dict[str, int]:
    """``name -> number of images`` in first-appearance order."""
    from chada.data.manifest import row_channel_names

    seen: dict[str, int] = {}
    for row in frame.to_dict("records"):
        for name in row_channel_names(row):
            seen[name] = seen.get(name, 0) + 1
    return seen


def _cache_reads(dataset: Any, show: bool) -> None:
    """Decode + normalise every image once and serve later reads from RAM.

    Filled in the main process before the DataLoader forks its workers, so every worker inherits the
    cache (copy-on-write) instead of re-reading files each epoch. Augmentation still runs per view.
    """
    from tqdm.auto import tqdm

    read = dataset.read
    cache = [read(i) for i in tqdm(range(len(dataset)), desc="caching images", disable=not show, leave=False)]

    def cached_read(index: int) -> tuple[Any, list[str]]:
        img, names = cache[index]
        return img, list(names)

    dataset.read = cached_read  # ManifestDataset.__getitem__ reads through self.read


# ------------------------------------------------------------------------------------- modules
def build_backbone(cfg: PretrainConfig, channel_vocab: list[str] | None = None) -> nn.Module:
    """The backbone named by ``cfg.model.name`` with ``cfg.model.overrides``.

    With a channel vocabulary, architectures whose config has a ``channel_names`` field record it (the
    slot of each name), and ``max_channels`` is checked against it.
    """
    overrides = dict(cfg.model.overrides)
    arch, defaults, _ = model_spec(cfg.model.name)
    fields = getattr(get_arch(arch), "config_class", None)
    field_names = set(getattr(fields, "__dataclass_fields__", {}))
    if channel_vocab is not None and "channel_names" in field_names and "channel_names" not in overrides:
        overrides["channel_names"] = list(channel_vocab)
    model = create_model(cfg.model.name, **overrides)
    if channel_vocab is not None:
        cmax = getattr(model, "max_channels", None)
        if isinstance(cmax, int) and len(channel_vocab) > cmax:
            raise ValueError(
                f"the channel vocabulary has {len(channel_vocab)} names but {cfg.model.name} has max_channels={cmax}; "
                "set model.overrides.max_channels or use data.channel_vocab=null (slot = position)"
            )
    return model


def resolve_pool(backbone: nn.Module, pool: str | None) -> str | None:
    """The ``pool`` argument for DINO: ``pool`` if given, else the fixed-size replacement of the
    default pool for models whose default embedding size varies with the channel count (the
    one-channel ViT's per-channel CLS concatenation becomes their mean over channels), else None."""
    if pool is not None:
        return pool
    variable = getattr(backbone, "variable_size_pools", None)
    if isinstance(variable, dict) and "cls" in variable:
        return variable["cls"]
    return None


def _param_groups(module: nn.Module, no_wd_names: set[str]) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        short = name.split(".", 1)[1] if name.startswith("backbone.") else None
        if p.ndim <= 1 or name.endswith(".bias") or name.endswith("weight_g") or short in no_wd_names:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients_per_parameter(params: list[nn.Parameter], clip: float) -> None:
    """DINO's clipping: each parameter's gradient norm is capped at ``clip`` separately."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    coefs = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------- trainer
class Trainer:
    """DINO pretraining of any registered backbone.

    ``Trainer(cfg).fit()`` trains, checkpoints to ``cfg.run.output_dir/checkpoint.pt``, logs to
    ``log.csv`` (+ TensorBoard), and at the end exports ``teacher/`` (and ``student/``) with
    ``save_pretrained``. Attributes after construction: ``student`` / ``teacher`` (un-wrapped
    :class:`MultiCropWrapper`), ``loss_fn``, ``optimizer``, ``global_step``.
    """

    def __init__(self, cfg: PretrainConfig, resume: bool = False, dist_info: DistInfo | None = None) -> None:
        self.cfg = cfg.validate()
        self.dist = dist_info or init_distributed(cfg.run.device)
        self.device = self.dist.device
        self.out_dir = Path(cfg.run.output_dir)
        if self.device.type == "cpu":
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.dist.world_size)))
            torch.set_num_threads(cfg.run.threads or max(1, (os.cpu_count() or 1) // max(1, local_world)))
        elif cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        ckpt_path = self.out_dir / CHECKPOINT_NAME
        if ckpt_path.exists() and not resume:
            raise ValueError(
                f"{ckpt_path} exists: pass --resume to continue that run, or choose another run.output_dir"
            )
        self._build_data()
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank (DDP also broadcasts)
        backbone = build_backbone(cfg, self.channel_vocab).to(self.device)
        head = DINOHead(
            backbone_dim(backbone), cfg.head.out_dim, cfg.head.hidden_dim, cfg.head.bottleneck_dim,
            cfg.head.nlayers, cfg.head.use_bn, cfg.head.norm_last_layer,
        ).to(self.device)  # fmt: skip
        self.pool = resolve_pool(backbone, cfg.model.pool)
        self.student = MultiCropWrapper(backbone, head, pool=self.pool)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.loss_fn = DINOLoss(cfg.head.out_dim, cfg.augment.n_global, cfg.dino.student_temp, cfg.dino.center_momentum)
        self.loss_fn.to(self.device)
        no_wd = set(getattr(backbone, "no_weight_decay", lambda: set())())
        self.optimizer = torch.optim.AdamW(_param_groups(self.student, no_wd), lr=0.0, betas=cfg.optim.betas)
        self._student_params = [p for p in self.student.parameters() if p.requires_grad]
        self._ema_pairs = [
            (pt, ps) for pt, ps in zip(self.teacher.parameters(), self.student.parameters()) if ps.requires_grad
        ]
        self._last_layer_params = list(self.student.head.last_layer.parameters())

        self.student_fwd: nn.Module = self.student
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student_fwd = DDP(self.student, device_ids=ids, find_unused_parameters=cfg.run.find_unused_parameters)
        self.teacher_fwd: nn.Module = self.teacher
        if cfg.run.compile:
            self.student_fwd = torch.compile(self.student_fwd, dynamic=True)  # type: ignore[assignment]
            self.teacher_fwd = torch.compile(self.teacher, dynamic=True)  # type: ignore[assignment]
        self._build_schedules()
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        if resume and ckpt_path.exists():
            self._load_checkpoint(ckpt_path)
        elif resume and self.dist.is_main:
            print(f"no checkpoint in {self.out_dir}: starting from scratch", file=sys.stderr)
        # Per-rank stream for stochastic layers (drop path); restored from the checkpoint on resume.
        if not (resume and ckpt_path.exists()):
            torch.manual_seed(cfg.run.seed + 1000 * (self.dist.rank + 1))

    # ------------------------------------------------------------------------ data
    def _build_data(self) -> None:
        from chada.data.augment import MultiCropAugment
        from chada.data.dataset import make_collate

        cfg = self.cfg
        a = cfg.augment
        self.augment = MultiCropAugment(
            global_size=a.global_size, local_size=a.local_size, n_global=a.n_global, n_local=a.n_local,
            global_scale=a.global_scale, local_scale=a.local_scale, **a.extra,
        )  # fmt: skip
        world, rank = self.dist.world_size, self.dist.rank
        bs = cfg.optim.batch_size_per_gpu
        self.channel_counts: dict[str, int] = {}
        if cfg.data.manifest is not None:
            from chada.data.dataset import ManifestDataset

            base = ManifestDataset(
                cfg.data.manifest, root=cfg.data.root, split=cfg.data.split, datasets=cfg.data.datasets,
                transform=self.augment, size=cfg.data.size, normalize=cfg.data.normalize,
            )  # fmt: skip
            if len(base) < bs * world:
                raise ValueError(
                    f"{len(base)} images (split={cfg.data.split!r}) are fewer than one global batch "
                    f"({bs} x {world} processes); lower optim.batch_size_per_gpu"
                )
            self.channel_counts = _manifest_channel_names(base.frame)
            if cfg.data.cache:
                _cache_reads(base, show=cfg.run.progress and self.dist.is_main)
            self.dataset: Dataset = EpochSeededDataset(base, cfg.run.seed)
            self.sampler: ResumableDistributedSampler | None = ResumableDistributedSampler(
                self.dataset, num_replicas=world, rank=rank, seed=cfg.run.seed
            )
            self.steps_per_epoch = len(self.sampler) // bs
        else:
            from chada.data.shards import ShardDataset

            self.dataset = ShardDataset(cfg.data.shards, transform=self.augment, shuffle=cfg.data.shard_shuffle,
                                        split=cfg.data.split, seed=cfg.run.seed)  # fmt: skip
            self.sampler = None
            self.steps_per_epoch = int(cfg.data.shard_samples_per_epoch) // (bs * world)
            if self.steps_per_epoch < 1:
                raise ValueError("data.shard_samples_per_epoch is smaller than one global batch")
        vocab = cfg.data.channel_vocab
        if vocab == "auto":
            if not self.channel_counts:
                raise ValueError("data.channel_vocab='auto' needs a manifest; list the names for shards")
            vocab = list(self.channel_counts)
        self.channel_vocab: list[str] | None = list(vocab) if vocab is not None else None
        self.collate: Any = make_collate(multicrop=True, channel_vocab=self.channel_vocab)
        cs = cfg.data.channel_sampling
        sampler = ChannelSampler(cs.scheme, cs.per, cs.shuffle, cs.discard_p, seed=cfg.run.seed)
        if sampler.active:  # subsets every view of an image alike, before the channel ids are looked up
            self.collate = ChannelSamplingCollate(self.collate, sampler)
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch

    def _loader(self, epoch: int, start_step: int) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        bs = cfg.optim.batch_size_per_gpu
        pin = cfg.data.pin_memory and self.device.type == "cuda"
        gen = torch.Generator().manual_seed(cfg.run.seed + epoch)  # keeps the global RNG untouched
        if isinstance(self.collate, ChannelSamplingCollate):
            self.collate.set_epoch(epoch)
        if self.sampler is not None:
            assert isinstance(self.dataset, EpochSeededDataset)
            self.dataset.set_epoch(epoch)
            self.sampler.set_position(epoch, start_step * bs)
            loader = DataLoader(
                self.dataset, batch_size=bs, sampler=self.sampler, num_workers=cfg.data.num_workers,
                collate_fn=self.collate, drop_last=True, pin_memory=pin, generator=gen,
            )  # fmt: skip
            yield from loader
            return
        seed_base = (cfg.run.seed, epoch, self.dist.rank)

        def init_worker(worker_id: int) -> None:
            torch.manual_seed(int(np.random.SeedSequence([*seed_base, worker_id]).generate_state(1)[0]))

        self.dataset.seed = cfg.run.seed + epoch  # type: ignore[attr-defined]
        n_yielded = 0
        while n_yielded < self.steps_per_epoch:
            loader = DataLoader(
                self.dataset, batch_size=bs, num_workers=cfg.data.num_workers, collate_fn=self.collate,
                drop_last=True, pin_memory=pin, worker_init_fn=init_worker, generator=gen,
            )  # fmt: skip
            empty = True
            for batch in loader:
                empty = False
                if n_yielded >= start_step:
                    yield batch
                n_yielded += 1
                if n_yielded >= self.steps_per_epoch:
                    return
            if empty:
                raise ValueError(f"the shards {cfg.data.shards} gave no full batch on rank {self.dist.rank}")

    # ------------------------------------------------------------------- schedules
    def _build_schedules(self) -> None:
        cfg, spe, total = self.cfg, self.steps_per_epoch, self.total_steps
        global_batch = cfg.optim.batch_size_per_gpu * self.dist.world_size
        base_lr = cfg.optim.lr * (global_batch / 256.0 if cfg.optim.scale_lr_with_batch else 1.0)
        self.base_lr = base_lr
        self.lr_schedule = CosineSchedule(base_lr, cfg.optim.min_lr, total, round(cfg.optim.warmup_epochs * spe))
        self.wd_schedule = CosineSchedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end, total)
        self.momentum_schedule = CosineSchedule(cfg.dino.momentum_teacher, cfg.dino.momentum_teacher_final, total)
        self.temp_schedule = LinearWarmupConstant(
            cfg.dino.warmup_teacher_temp, cfg.dino.teacher_temp, round(cfg.dino.warmup_teacher_temp_epochs * spe)
        )
        self.freeze_last_layer_steps = round(cfg.dino.freeze_last_layer_epochs * spe)

    # ------------------------------------------------------------------- checkpoint
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
            "format": "chada-dino/1",
        }

    def save_checkpoint(self) -> Path | None:
        """Every rank calls this (RNG states are gathered); rank 0 writes atomically."""
        rng = _rng_state()
        if self.dist.distributed:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if not self.dist.is_main:
            return None
        state = self.state_dict()
        state["rng"] = gathered
        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.out_dir / CHECKPOINT_NAME
        atomic_write_bytes(path, buf.getvalue())
        return path

    def _load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("format") != "chada-dino/1":
            raise ValueError(f"{path} is not a chada DINO checkpoint")
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_fn.load_state_dict(state["dino_loss"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        if state.get("channel_counts") and not self.channel_counts:
            self.channel_counts = dict(state["channel_counts"])
        rngs = state.get("rng") or []
        if state.get("world_size") != self.dist.world_size:
            warnings.warn(
                f"checkpoint written with {state.get('world_size')} processes, resuming with {self.dist.world_size}: "
                "training continues but will not match an uninterrupted run exactly",
                stacklevel=2,
            )
        if rngs:
            _set_rng_state(rngs[self.dist.rank % len(rngs)])

    # ------------------------------------------------------------------- logging
    def _open_logs(self) -> None:
        self._csv_path = self.out_dir / LOG_NAME
        rows: list[dict[str, str]] = []
        if self._csv_path.exists() and self.global_step > 0:
            with open(self._csv_path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= self.global_step]
        # Rows after the checkpoint belong to the interrupted tail and are replaced by the resumed run.
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(self._csv_path, text.getvalue().encode())
        self._csv = open(self._csv_path, "a", newline="")  # noqa: SIM115 - kept open for the whole run
        self._csv_writer = csv.DictWriter(self._csv, fieldnames=LOG_FIELDS)
        self._tb = None
        if self.cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.global_step + 1)
            except ImportError:
                warnings.warn("tensorboard is not installed: logging to CSV only", stacklevel=2)

    def _log(self, row: dict[str, Any]) -> None:
        self._csv_writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})
        self._csv.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch", "collapse") and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, row["step"])

    def _close_logs(self) -> None:
        self._csv.close()
        if self._tb is not None:
            self._tb.close()

    # ------------------------------------------------------------------- training
    def _autocast(self) -> Any:
        if self.cfg.run.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self, views: list[Any], want_stats: bool) -> dict[str, Any]:
        """One optimisation step on a list of view ChannelBatches (globals first)."""
        it = self.global_step
        lr, wd = self.lr_schedule(it), self.wd_schedule(it)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group["apply_wd"]:
                group["weight_decay"] = wd
        temp = self.temp_schedule(it)
        n_global = self.cfg.augment.n_global
        with self._autocast():
            with torch.no_grad():
                teacher_out = self.teacher_fwd(views[:n_global])
            student_out = self.student_fwd(views)
        stats = self.loss_fn.stats(student_out.detach(), teacher_out, temp) if want_stats else {}
        loss = self.loss_fn(student_out, teacher_out, temp)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at step {it}: stopping (lower optim.lr?)")
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

    def fit(self) -> Path:
        """Train to the end (or ``run.max_steps``); return the output folder."""
        cfg = self.cfg
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
            if cfg.run.export_init and self.global_step == 0:
                # The untrained baseline with exactly this run's architecture, init and seed.
                self.export(which=("init",))
            self._open_logs()
        stop_at = self.total_steps if cfg.run.max_steps is None else min(cfg.run.max_steps, self.total_steps)
        global_batch = cfg.optim.batch_size_per_gpu * self.dist.world_size
        progress = None
        if self.dist.is_main and cfg.run.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=self.total_steps, initial=self.global_step, desc="dino", unit="step", dynamic_ncols=True)
        self.student.train()
        # The teacher runs without stochastic depth/dropout (as DINO builds it); BatchNorm in the head
        # needs batch statistics, so then it stays in train mode.
        self.teacher.train(self.cfg.head.use_bn)
        t_start = time.perf_counter()
        t_last, n_since = time.perf_counter(), 0
        # A near-uniform teacher is normal while the LR and teacher temperature warm up (the CSV's
        # collapse column records it anyway), so the warning waits for the end of warm-up, then repeats
        # at most every 10 epochs while the collapse lasts.
        warn_from = max(cfg.optim.warmup_epochs, cfg.dino.warmup_teacher_temp_epochs, cfg.dino.freeze_last_layer_epochs)
        try:
            while self.global_step < stop_at:
                for batch in self._loader(self.epoch, self.step_in_epoch):
                    views = [b.to(self.device, non_blocking=True) for b in batch["batches"]]
                    if self.sampler is None:  # streaming: learn the channel names as they come
                        for names in batch["channel_names"]:
                            for n in names:
                                self.channel_counts[n] = self.channel_counts.get(n, 0) + 1
                    log_now = (self.global_step + 1) % cfg.run.log_every_steps == 0 or self.global_step + 1 == stop_at
                    res = self.train_step(views, want_stats=log_now and self.dist.is_main)
                    self.global_step += 1
                    self.step_in_epoch += 1
                    n_since += 1
                    if self.step_in_epoch >= self.steps_per_epoch:
                        self.epoch += 1
                        self.step_in_epoch = 0
                    if log_now:
                        loss = res["loss"].float()
                        if self.dist.distributed:
                            dist.all_reduce(loss)
                            loss = loss / self.dist.world_size
                        now = time.perf_counter()
                        if self.dist.is_main:
                            kind = collapse_kind(res) if "kl" in res else None
                            row = {k: v for k, v in res.items() if k != "loss"}
                            row.update(
                                step=self.global_step, epoch=round(self.global_step / self.steps_per_epoch, 4),
                                loss=float(loss), img_per_s=n_since * global_batch / max(now - t_last, 1e-9),
                                collapse=kind or "", elapsed_s=round(now - t_start, 2),
                            )  # fmt: skip
                            self._log(row)
                            if kind and self.epoch >= warn_from:
                                warn_from = self.epoch + 10
                                msg = (
                                    f"step {self.global_step}: the teacher looks collapsed ({kind}): entropy "
                                    f"{res['teacher_entropy']:.3f} / {res['max_entropy']:.3f} nats, batch entropy "
                                    f"{res['teacher_batch_entropy']:.3f}, KL {res['kl']:.2e}"
                                )
                                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                            if progress is not None:
                                progress.set_postfix(loss=f"{float(loss):.4f}", lr=f"{res['lr']:.2e}",
                                                     img_s=f"{row['img_per_s']:.1f}")  # fmt: skip
                        t_last, n_since = now, 0
                    if progress is not None:
                        progress.update(1)
                    if self.global_step % cfg.run.save_every_steps == 0 or self.global_step == stop_at:
                        self.save_checkpoint()
                    if self.global_step >= stop_at:
                        break
        finally:
            if progress is not None:
                progress.close()
            if self.dist.is_main:
                self._close_logs()
        if self.global_step >= self.total_steps and self.dist.is_main:
            self.export()
        if self.dist.distributed:
            dist.barrier()
        return self.out_dir

    def export(self, which: tuple[str, ...] | None = None) -> Path:
        """Write ``teacher/`` (and ``student/``) with ``save_pretrained``; returns the first folder written.

        ``which=("init",)`` writes ``init/``: the teacher backbone as it is now, called at step 0 so it
        holds the weights the run started from (the "same architecture, untrained" baseline).
        """
        if which is None:
            which = ("teacher", "student") if self.cfg.run.export_student else ("teacher",)
        extra = {
            "ssl": "dino",
            "channel_names_seen": list(self.channel_counts),
            "channel_image_counts": dict(self.channel_counts),
            "channel_vocab": self.channel_vocab,
            "dino_pool": self.pool,
            # the size of the global views the teacher saw: `chada embed` embeds at it by default
            "image_size": self.cfg.augment.global_size,
            "global_step": self.global_step,
            "epochs": self.cfg.optim.epochs,
            "pretrain_config": config_to_dict(self.cfg),
        }
        paths = [
            save_pretrained(
                (self.student if name == "student" else self.teacher).backbone, self.out_dir / name,
                extra={**extra, "weights": name},
            )
            for name in which
        ]  # fmt: skip
        return paths[0]


def _as_config(config: PretrainConfig | dict[str, Any] | str | Path, overrides: list[str] | None) -> PretrainConfig:
    from chada.ssl.config import apply_overrides

    if isinstance(config, PretrainConfig):
        return apply_overrides(copy.deepcopy(config), overrides)
    if isinstance(config, dict):
        return apply_overrides(config_from_dict(config), overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    raise TypeError(f"config must be a PretrainConfig, a dict or a YAML path, got {type(config).__name__}")


def pretrain(
    config: PretrainConfig | dict[str, Any] | str | os.PathLike,
    overrides: list[str] | None = None,
    resume: bool = False,
) -> Path:
    """Run DINO pretraining and return the output folder (``teacher/`` inside once finished).

    Args:
        config: a :class:`PretrainConfig`, a nested dict, or a YAML file path.
        overrides: ``section.key=value`` strings applied on top.
        resume: continue from ``output_dir/checkpoint.pt`` if it exists.
    """
    cfg = _as_config(config if not isinstance(config, os.PathLike) else Path(config), overrides)
    return Trainer(cfg, resume=resume).fit()
