"""What DINO pretraining trains, built from the config: backbone, head, student/teacher, loss,
optimizer groups, per-block compilation and the schedules (dinov2's ``SSLMetaArch`` side)."""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chada.models.registry import create_model, get_arch, model_spec
from chada.ssl.config import PretrainConfig
from chada.ssl.dino import DINOHead, DINOLoss, MultiCropWrapper, backbone_dim
from chada.ssl.schedules import CosineSchedule, LinearWarmupConstant

__all__ = [
    "CompileError",
    "build_backbone",
    "resolve_pool",
    "param_groups",
    "compile_blocks",
    "clip_gradients_per_parameter",
    "DinoModules",
    "build_modules",
    "DinoSchedules",
    "build_schedules",
    "teacher_mode",
    "set_threads",
]


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
        warnings.warn(
            f"{cfg.model.name} has no stochastic depth: model.drop_path_rate is ignored", stacklevel=2
        )
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


def param_groups(
    module: nn.Module, rule: str = "dino", no_wd_names: set[str] | None = None
) -> list[dict[str, Any]]:
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


class CompileError(RuntimeError):
    """``torch.compile`` failed on this machine; the message says to set ``run.compile=false``."""

    @classmethod
    def of(cls, exc: Exception, step: int, rank: int) -> CompileError:
        """The first meaningful line of a dynamo/inductor error, with the step, rank and what to do."""
        lines = [
            ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().endswith("raised:")
        ]
        first = (lines or [type(exc).__name__])[0][:300]
        return cls(
            f"torch.compile failed at step {step} on rank {rank} ({type(exc).__name__}: {first}); "
            "set run.compile=false"
        )


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
        raise ValueError(
            f"run.compile: {type(module).__name__} has no `blocks` to compile; set run.compile=false"
        )
    # Every block shares one forward but has its own drop-path rate, a constant dynamo guards on: one
    # graph per block (train and eval) must fit under the recompile limit, or the last blocks run eager.
    limit = 4 * len(blocks) + 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, 4 * limit
    )
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


@dataclass
class DinoModules:
    """Student and teacher (:class:`MultiCropWrapper`, un-wrapped), the loss, the optimizer, and the
    parameter lists the step reuses (EMA pairs, the head's last layer)."""

    student: MultiCropWrapper
    teacher: MultiCropWrapper
    loss_fn: DINOLoss
    optimizer: torch.optim.Optimizer
    pool: str | None
    student_params: list[nn.Parameter]
    ema_pairs: list[tuple[nn.Parameter, nn.Parameter]]
    last_layer_params: list[nn.Parameter]


def build_modules(cfg: PretrainConfig, channel_vocab: list[str] | None, device: torch.device) -> DinoModules:
    """Student, teacher (a copy: identical initial weights), loss and AdamW, compiled per block if asked.

    Seeds torch with ``run.seed`` first, so every rank starts from the same weights (DDP also broadcasts).
    """
    torch.manual_seed(cfg.run.seed)
    backbone = build_backbone(cfg, channel_vocab).to(device)
    head = DINOHead(
        backbone_dim(backbone), cfg.head.out_dim, cfg.head.hidden_dim, cfg.head.bottleneck_dim,
        cfg.head.nlayers, cfg.head.use_bn, cfg.head.norm_last_layer,
    ).to(device)  # fmt: skip
    pool = resolve_pool(backbone, cfg.model.pool)
    student = MultiCropWrapper(backbone, head, pool=pool)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss_fn = DINOLoss(
        cfg.head.out_dim, cfg.augment.n_global, cfg.dino.student_temp, cfg.dino.center_momentum
    )
    loss_fn.to(device)
    no_wd = set(getattr(backbone, "no_weight_decay", lambda: set())())
    groups = param_groups(student, cfg.optim.no_weight_decay, no_wd)
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=cfg.optim.betas)
    student_params = [p for p in student.parameters() if p.requires_grad]
    ema_pairs = [(pt, ps) for pt, ps in zip(teacher.parameters(), student.parameters()) if ps.requires_grad]
    last_layer_params = list(student.head.last_layer.parameters())
    if cfg.run.compile:
        compile_blocks(student.backbone)
        compile_blocks(teacher.backbone)
    return DinoModules(
        student, teacher, loss_fn, optimizer, pool, student_params, ema_pairs, last_layer_params
    )


@dataclass
class DinoSchedules:
    """Every schedule as a pure function of the global step (what makes a resume exact)."""

    base_lr: float
    lr: CosineSchedule
    wd: CosineSchedule
    momentum: CosineSchedule
    temp: LinearWarmupConstant
    per_epoch_temp: bool  # DINO's teacher temperature is indexed by the epoch, not the step
    steps_per_epoch: int
    freeze_last_layer_steps: int

    def teacher_temp(self, step: int) -> float:
        """The teacher temperature used at global ``step``."""
        return self.temp(step // self.steps_per_epoch) if self.per_epoch_temp else self.temp(step)


def build_schedules(cfg: PretrainConfig, steps_per_epoch: int, total: int, world_size: int) -> DinoSchedules:
    """LR (scaled by the global batch / 256 if asked), weight decay, momentum, teacher temperature."""
    spe = steps_per_epoch
    global_batch = cfg.optim.batch_size_per_gpu * world_size
    base_lr = cfg.optim.lr * (global_batch / 256.0 if cfg.optim.scale_lr_with_batch else 1.0)
    lr = CosineSchedule(
        base_lr,
        cfg.optim.min_lr,
        total,
        round(cfg.optim.warmup_epochs * spe),
        warmup=cfg.optim.warmup_schedule,
    )
    wd = CosineSchedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end, total)
    momentum = CosineSchedule(cfg.dino.momentum_teacher, cfg.dino.momentum_teacher_final, total)
    per_epoch = cfg.dino.teacher_temp_schedule == "per_epoch"
    if per_epoch:
        temp = LinearWarmupConstant(
            cfg.dino.warmup_teacher_temp, cfg.dino.teacher_temp, int(cfg.dino.warmup_teacher_temp_epochs)
        )
    else:
        temp = LinearWarmupConstant(
            cfg.dino.warmup_teacher_temp, cfg.dino.teacher_temp,
            round(cfg.dino.warmup_teacher_temp_epochs * spe), form="ramp",
        )  # fmt: skip
    freeze = round(cfg.dino.freeze_last_layer_epochs * spe)
    return DinoSchedules(base_lr, lr, wd, momentum, temp, per_epoch, spe, freeze)


def teacher_mode(teacher: nn.Module) -> None:
    """Teacher in eval mode: no drop path, as DINO builds its teacher without stochastic depth.

    BatchNorm layers in the head (``head.use_bn``) are the exception and run in train mode: DINO
    never calls ``teacher.eval()``, so its teacher's head BN normalises with the batch statistics
    of the global crops and updates its own running statistics (buffers are not part of the EMA).
    Only the drop path differs, which DINO switches off by building the teacher with rate 0.
    """
    teacher.eval()
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()


def set_threads(threads: int | None, device: torch.device, world_size: int) -> None:
    """torch's CPU threads: ``run.threads``, else on a CPU run the cores shared among the local ranks."""
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(1, local_world)))
    elif threads:
        torch.set_num_threads(threads)
