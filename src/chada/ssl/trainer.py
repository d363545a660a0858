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
- the checkpoint holds student, teacher, optimizer, DINO center, epoch/step, and every rank's RNG
  states, all as tensors and plain containers: it is read back with ``torch.load(weights_only=True)``,
  so a tampered file cannot run code.

Streaming shards (``data.shards``) have no index: each rank draws exactly ``steps_per_epoch`` batches
per epoch from its shards (cycling them), a resumed epoch re-reads and drops the consumed batches.
Their order and augmentations are seeded by ``(seed, epoch, pass, rank, worker, sample)``
(:class:`chada.data.shards.ShardDataset`), so a resumed shard run is exact too, with any number of
workers (the same number as before: the split of shards across workers is part of the order).

Resuming refuses a config whose values change the result (see :data:`SAFE_TO_CHANGE_ON_RESUME` for the
ones that do not) unless the changed keys are allowed explicitly, and a finished run's ``teacher/`` is
never retrained or rewritten by a plain ``--resume``.
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
from collections.abc import Iterator, Sequence
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
    "SAFE_TO_CHANGE_ON_RESUME",
    "config_changes",
    "load_checkpoint",
    "CompileError",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "chada-dino/2"  # /1 pickled numpy/python RNG objects: not loadable with weights_only
LOG_NAME = "log.csv"
# Config keys that do not change the trained weights beyond float round-off: a resumed run may differ
# in them silently. Everything else must match the checkpoint's config, or be allowed by name.
SAFE_TO_CHANGE_ON_RESUME = frozenset({
    "run.output_dir", "run.max_steps", "run.save_every_steps", "run.log_every_steps", "run.tensorboard",
    "run.progress", "run.export_student", "run.export_init", "run.threads", "run.find_unused_parameters",
    "data.pin_memory", "data.cache",
})  # fmt: skip
# Safe only for map-style (manifest) data, whose augmentations are seeded per sample; with shards the
# split of shards across workers is part of the order.
SAFE_FOR_MANIFEST_ONLY = frozenset({"data.num_workers"})
LOG_FIELDS = [
    "step", "epoch", "loss", "lr", "wd", "teacher_temp", "momentum", "img_per_s",
    "teacher_entropy", "teacher_batch_entropy", "kl", "collapse", "elapsed_s",
]  # fmt: skip


class CompileError(RuntimeError):
    """``torch.compile`` failed on this machine; the message says to set ``run.compile=false``."""


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
            # the CPU generator only (augmentations draw from it): torch.manual_seed would also reseed
            # the accelerators' generators, which this fork does not restore, and costs 60x more
            torch.default_generator.manual_seed(seed)
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
    if "drop_path_rate" in field_names and "drop_path_rate" not in overrides:
        overrides["drop_path_rate"] = cfg.model.drop_path_rate
    elif "drop_path_rate" not in field_names and cfg.model.drop_path_rate > 0:
        warnings.warn(f"{cfg.model.name} has no stochastic depth: model.drop_path_rate is ignored", stacklevel=2)
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


def param_groups(module: nn.Module, rule: str = "dino", no_wd_names: set[str] | None = None) -> list[dict[str, Any]]:
    """AdamW groups ``[decayed, not decayed]`` (see ``optim.no_weight_decay``).

    ``"dino"``: DINO's ``get_params_groups``: no decay for names ending in ``.bias`` and for 1-D
    parameters, decay for everything else (``pos_embed``, ``cls_token``, ``channel_embed`` included).
    ``"dino_and_embeddings"``: also no decay for the backbone's ``no_weight_decay()`` names (given as
    ``no_wd_names``) and the head's ``weight_g``.
    """
    if rule not in ("dino", "dino_and_embeddings"):
        raise ValueError(f"optim.no_weight_decay must be 'dino' or 'dino_and_embeddings', got {rule!r}")
    names = no_wd_names or set()
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        skip = name.endswith(".bias") or p.ndim == 1
        if rule == "dino_and_embeddings":
            short = name.split(".", 1)[1] if name.startswith("backbone.") else None
            skip = skip or p.ndim == 0 or name.endswith("weight_g") or short in names
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


def compile_blocks(module: nn.Module) -> int:
    """``torch.compile`` every transformer block of a backbone in place; returns how many.

    Blocks, not the whole model: the packed forward groups images by channel count, so sequence
    lengths and group sizes change from batch to batch. A whole-model ``dynamic=True`` compile fails on
    CPU with torch 2.13 (``InductorError: cannot determine truth value of Relational``), a static one
    recompiles for every new batch composition until it hits the recompile limit, and automatic
    dynamic shapes hit an internal assert. One block is a plain ``[G, L, D] -> [G, L, D]`` function:
    compiled once with dynamic shapes, it serves every length, holds almost all the FLOPs, and its
    parameter names do not change (checkpoints stay interchangeable with eager runs).
    """
    import torch._dynamo
    import torch._functorch.config
    import torch._inductor.config

    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise ValueError(f"run.compile: {type(module).__name__} has no `blocks` to compile; set run.compile=false")
    # Every block shares one forward but has its own drop-path rate, a constant dynamo guards on: one
    # graph per block (train and eval) must fit under the recompile limit, or the last blocks run eager.
    limit = 4 * len(blocks) + 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4 * limit)
    # DDP's graph splitting (optimize_ddp) exists to overlap a whole compiled model's all-reduce with
    # its backward; for single blocks it has nothing to split, and with dynamic shapes it fails in
    # torch 2.13 ("'float' object has no attribute 'meta'"). DDP's own bucketing still overlaps.
    torch._dynamo.config.optimize_ddp = False
    # Random ops (drop path) through torch's own generator, as in eager mode (the masks are [G, 1, 1]:
    # nothing to speed up there), and no AOTAutograd cache: in torch 2.13 a training graph with drop
    # path loaded from that cache computes other values than the same graph compiled afresh (found by
    # benchmarks/rehearsal.py: a resumed run, which loads what the interrupted one cached, drifted from
    # an uninterrupted one at its first step with a new shape). Inductor's FX graph cache stays on.
    torch._inductor.config.fallback_random = True
    torch._functorch.config.enable_autograd_cache = False
    for blk in blocks:
        blk.compile(dynamic=True)
    return len(blocks)


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
    """Every RNG of this process as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": [int(w) for w in words], "gauss_next": gauss_next},
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = [t.cpu() for t in torch.cuda.get_rng_state_all()]
    return state


def _cpu_bytes(t: Any) -> torch.Tensor:
    # set_rng_state wants a CPU ByteTensor, whatever device a loader mapped the checkpoint to.
    return torch.as_tensor(t).detach().to(device="cpu", dtype=torch.uint8)


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    n = state["numpy"]
    keys = np.asarray(torch.as_tensor(n["keys"]).cpu().numpy(), dtype=np.uint32)
    np.random.set_state((n["kind"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(w) for w in py["state"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_cpu_bytes(t) for t in state["cuda"]])


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a DINO ``checkpoint.pt`` safely: ``weights_only=True`` (no code from the file runs), on CPU.

    Raises ValueError naming the file and what to do when it is corrupt, truncated, not a chada DINO
    checkpoint, or holds anything but tensors and plain containers.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt zip, truncated file, refused pickle: one message
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(
            f"{path} cannot be read as a chada DINO checkpoint ({type(exc).__name__}: {first}). It is "
            "corrupt, truncated, tampered with, or from an older chada; delete it to start the run over, "
            "or choose another run.output_dir"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path} is not a {CHECKPOINT_FORMAT} checkpoint (found {found!r}); delete it to start the run "
            "over, or choose another run.output_dir"
        )
    missing = [k for k in ("student", "teacher", "optimizer", "dino_loss", "config", "global_step") if k not in state]
    if missing:
        raise ValueError(f"{path} lacks {missing}: it is incomplete; delete it to start the run over")
    return state


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_changes(saved: dict[str, Any], cfg: PretrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (checkpoint value, new value)}`` for every key that differs and may change the
    result (keys in :data:`SAFE_TO_CHANGE_ON_RESUME` are left out)."""
    old = _flatten(config_to_dict(config_from_dict(saved)))
    new = _flatten(config_to_dict(cfg))
    safe = set(SAFE_TO_CHANGE_ON_RESUME)
    if cfg.data.shards is None:
        safe |= SAFE_FOR_MANIFEST_ONLY
    return {
        k: (old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if k not in safe and old.get(k) != new.get(k)
    }


# ------------------------------------------------------------------------------------- trainer
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
        if ckpt_path.exists() and ckpt_path.is_dir():
            raise ValueError(f"{ckpt_path} is a directory, not a checkpoint; choose another run.output_dir")
        if not ckpt_path.exists() and (self.out_dir / "teacher" / "config.json").exists():
            raise ValueError(
                f"{self.out_dir} holds a finished run's teacher/ but no {CHECKPOINT_NAME}: a new run would "
                "overwrite it; choose another run.output_dir"
            )
        # Read and check the checkpoint before any expensive setup (data caching, compilation).
        state = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
        if state is not None:
            self._check_resume_config(ckpt_path, state, allow_changes)
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
        groups = param_groups(self.student, cfg.optim.no_weight_decay, no_wd)
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=cfg.optim.betas)
        self._student_params = [p for p in self.student.parameters() if p.requires_grad]
        self._ema_pairs = [
            (pt, ps) for pt, ps in zip(self.teacher.parameters(), self.student.parameters()) if ps.requires_grad
        ]
        self._last_layer_params = list(self.student.head.last_layer.parameters())

        if cfg.run.compile:
            compile_blocks(self.student.backbone)
            compile_blocks(self.teacher.backbone)
        self.student_fwd: nn.Module = self.student
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student_fwd = DDP(self.student, device_ids=ids, find_unused_parameters=cfg.run.find_unused_parameters)
        self.teacher_fwd: nn.Module = self.teacher
        self._build_schedules()
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        if state is not None:
            self._load_state(ckpt_path, state)
        else:
            if resume and self.dist.is_main:
                print(f"no checkpoint in {self.out_dir}: starting from scratch", file=sys.stderr)
            # Per-rank stream for stochastic layers (drop path); restored from the checkpoint on resume.
            torch.manual_seed(cfg.run.seed + 1000 * (self.dist.rank + 1))

    def _check_resume_config(self, path: Path, state: dict[str, Any], allow: Sequence[str]) -> None:
        """Refuse to resume with a config that changes the result, unless each changed key is allowed."""
        try:
            changes = config_changes(state["config"], self.cfg)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: its recorded config cannot be read ({exc}); delete it to start over") from None
        if state.get("world_size") != self.dist.world_size:
            changes["world_size"] = (state.get("world_size"), self.dist.world_size)
        allowed = set(allow)
        unknown = allowed - set(changes) - set(_flatten(config_to_dict(self.cfg))) - {"world_size"}
        if unknown:
            raise ValueError(f"--resume-allow-changes: unknown key(s) {sorted(unknown)}")
        refused = {k: v for k, v in changes.items() if k not in allowed}
        if refused:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in refused.items()))
            raise ValueError(
                f"cannot resume {path}: the config differs from the checkpoint's in values that change the "
                f"result ({listed}). Restore them, or allow the change with --resume-allow-changes "
                f"{','.join(refused)}, or choose another run.output_dir"
            )
        if changes and self.dist.is_main:
            listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            print(f"resuming {path} with allowed config changes: {listed}", file=sys.stderr)

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
        self._learn_channels = False
        if cfg.data.manifest is not None:
            from chada.data.dataset import ManifestDataset

            base = ManifestDataset(
                cfg.data.manifest, root=cfg.data.root, split=cfg.data.split, datasets=cfg.data.datasets,
                transform=self.augment, size=cfg.data.size, normalize=cfg.data.normalize,
                nan_policy=cfg.data.nan_policy,
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
                                        split=cfg.data.split, seed=cfg.run.seed, rank=rank, world_size=world)  # fmt: skip
            if len(self.dataset.urls) < world:
                raise ValueError(
                    f"{len(self.dataset.urls)} shard(s) for {world} processes: each process reads whole shards; "
                    "write more, smaller shards (chada data shard --shard-size)"
                )
            index = self.dataset.index or {}
            # The index written by `chada data shard` knows the corpus' channel names up front, so init/
            # and every rank record them; older indexes get them while streaming (gathered at export).
            if isinstance(index.get("channel_names"), dict):
                self.channel_counts = {str(k): int(v) for k, v in index["channel_names"].items()}
            self._learn_channels = not self.channel_counts
            self.sampler = None
            self.steps_per_epoch = int(cfg.data.shard_samples_per_epoch) // (bs * world)
            if self.steps_per_epoch < 1:
                raise ValueError("data.shard_samples_per_epoch is smaller than one global batch")
        vocab = cfg.data.channel_vocab
        if vocab == "auto":
            if not self.channel_counts:
                raise ValueError(
                    "data.channel_vocab='auto' needs a manifest or a shards.json that lists channel names "
                    "(written by `chada data shard`); otherwise list the names"
                )
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
        n_yielded, pass_index = 0, 0
        while n_yielded < self.steps_per_epoch:
            # Order and views are a function of (seed, epoch, pass, rank, worker): a resumed epoch
            # re-reads exactly the batches it drops.
            self.dataset.set_epoch(epoch, pass_index)  # type: ignore[attr-defined]
            pass_index += 1
            loader = DataLoader(
                self.dataset, batch_size=bs, num_workers=cfg.data.num_workers, collate_fn=self.collate,
                drop_last=True, pin_memory=pin, generator=gen,
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
        self.lr_schedule = CosineSchedule(
            base_lr, cfg.optim.min_lr, total, round(cfg.optim.warmup_epochs * spe), warmup=cfg.optim.warmup_schedule
        )
        self.wd_schedule = CosineSchedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end, total)
        self.momentum_schedule = CosineSchedule(cfg.dino.momentum_teacher, cfg.dino.momentum_teacher_final, total)
        if cfg.dino.teacher_temp_schedule == "per_epoch":  # DINO: indexed by the epoch
            self.temp_schedule = LinearWarmupConstant(
                cfg.dino.warmup_teacher_temp, cfg.dino.teacher_temp, int(cfg.dino.warmup_teacher_temp_epochs)
            )
        else:  # indexed by the step
            self.temp_schedule = LinearWarmupConstant(
                cfg.dino.warmup_teacher_temp, cfg.dino.teacher_temp,
                round(cfg.dino.warmup_teacher_temp_epochs * spe), form="ramp",
            )  # fmt: skip
        self.freeze_last_layer_steps = round(cfg.dino.freeze_last_layer_epochs * spe)

    def teacher_temp(self, step: int) -> float:
        """The teacher temperature used at global ``step``."""
        if self.cfg.dino.teacher_temp_schedule == "per_epoch":
            return self.temp_schedule(step // self.steps_per_epoch)
        return self.temp_schedule(step)

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
            "format": CHECKPOINT_FORMAT,
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

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        """Restore modules, optimizer, center, position and this rank's RNG from a loaded checkpoint."""
        try:
            self.student.load_state_dict(state["student"])
            self.teacher.load_state_dict(state["teacher"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.loss_fn.load_state_dict(state["dino_loss"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ValueError(
                f"{path} does not fit this run's model ({first}); use the config it was written with, or "
                "choose another run.output_dir"
            ) from None
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        # Names learned while streaming were saved by rank 0; the other ranks' share is lost with a kill
        # (the names are what matters; counts of images seen are indicative).
        if state.get("channel_counts") and not self.channel_counts and (self.dist.is_main or not self._learn_channels):
            self.channel_counts = dict(state["channel_counts"])
        rngs = state.get("rng") or []
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
        temp = self.teacher_temp(it)
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
        """Train to the end (or ``run.max_steps``); return the output folder.

        A run that already finished (its checkpoint at the last step and ``teacher/`` written) is left
        as it is: nothing is retrained or rewritten.
        """
        cfg = self.cfg
        if self.global_step >= self.total_steps and (self.out_dir / "teacher" / "config.json").exists():
            if self.dist.is_main:
                print(f"{self.out_dir} already finished ({self.global_step}/{self.total_steps} steps): "
                      f"{self.out_dir / 'teacher'} is kept as it is", file=sys.stderr)  # fmt: skip
            return self.out_dir
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
        self._teacher_mode()
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
                    if self._learn_channels:  # streaming without names in the index: learn them
                        for names in batch["channel_names"]:
                            for n in names:
                                self.channel_counts[n] = self.channel_counts.get(n, 0) + 1
                    log_now = (self.global_step + 1) % cfg.run.log_every_steps == 0 or self.global_step + 1 == stop_at
                    res = self._step_or_explain(views, want_stats=log_now and self.dist.is_main)
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
        if self.global_step >= self.total_steps:
            self._gather_channel_counts()
            if self.dist.is_main:
                self.export()
        if self.dist.distributed:
            dist.barrier()
        return self.out_dir

    def _teacher_mode(self) -> None:
        """Teacher in eval mode: no drop path, as DINO builds its teacher without stochastic depth.

        BatchNorm layers in the head (``head.use_bn``) are the exception and run in train mode: DINO
        never calls ``teacher.eval()``, so its teacher's head BN normalises with the batch statistics
        of the global crops and updates its own running statistics (buffers are not part of the EMA).
        Only the drop path differs, which DINO switches off by building the teacher with rate 0.
        """
        self.teacher.eval()
        for m in self.teacher.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()

    def _step_or_explain(self, views: list[Any], want_stats: bool) -> dict[str, Any]:
        """``train_step``, with a compile failure turned into a message that says what to do."""
        if not self.cfg.run.compile:
            return self.train_step(views, want_stats)
        import torch._dynamo.exc as dynamo_exc

        try:
            return self.train_step(views, want_stats)
        except dynamo_exc.TorchDynamoException as exc:  # InductorError included
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().endswith("raised:")]
            first = (lines or [type(exc).__name__])[0][:300]
            raise CompileError(
                f"torch.compile failed at step {self.global_step} on rank {self.dist.rank} "
                f"({type(exc).__name__}: {first}); set run.compile=false"
            ) from exc

    def _gather_channel_counts(self) -> None:
        """Streaming runs without names in their index learn them per rank: sum every rank's counts
        (images seen, repeats included) before the export."""
        if not self.dist.distributed or not self._learn_channels:
            return
        gathered: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, dict(self.channel_counts))
        merged: dict[str, int] = {}
        for counts in gathered:
            for name, n in counts.items():
                merged[name] = merged.get(name, 0) + n
        self.channel_counts = merged

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
            # how names reached channel-embedding slots during training: through channel_vocab, or by
            # position in each image (the paper's rule; then channel_names_seen has no slot order)
            "channel_slots": "vocabulary" if self.channel_vocab is not None else "position",
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
    allow_changes: Sequence[str] = (),
) -> Path:
    """Run DINO pretraining and return the output folder (``teacher/`` inside once finished).

    Args:
        config: a :class:`PretrainConfig`, a nested dict, or a YAML file path.
        overrides: ``section.key=value`` strings applied on top.
        resume: continue from ``output_dir/checkpoint.pt`` if it exists.
        allow_changes: config keys that may differ from the checkpoint's although they change the result.
    """
    cfg = _as_config(config if not isinstance(config, os.PathLike) else Path(config), overrides)
    return Trainer(cfg, resume=resume, allow_changes=allow_changes).fit()
