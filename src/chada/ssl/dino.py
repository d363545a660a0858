"""DINO building blocks (Caron et al. 2021): projection head, loss with centering, multi-crop wrapper.

Shapes: B images per view, V views (the first ``n_global`` are global crops), K prototypes (``out_dim``),
D backbone features.

- :class:`DINOHead`: ``[N, D] -> [N, K]``: MLP (``nlayers`` linear layers, GELU, hidden 2048) down to a
  256-d bottleneck, L2 normalisation, then a weight-normalised linear layer without bias.
- :class:`DINOLoss`: cross-entropy between the sharpened, centred teacher distribution of each global
  view and the student distribution of every *other* view; the center is an EMA (momentum 0.9) of the
  teacher's batch mean, all-reduced across processes.
- :class:`MultiCropWrapper`: runs the backbone once per run of consecutive same-size views (all global
  crops together, then all local crops), then the head once on everything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from chada.models.batch import ChannelBatch

__all__ = [
    "WeightNormLinear",
    "DINOHead",
    "DINOLoss",
    "MultiCropWrapper",
    "concat_channel_batches",
    "backbone_dim",
    "collapse_kind",
]


class WeightNormLinear(nn.Module):
    """Bias-free linear layer ``y = x (g * v / ||v||)^T`` with direction ``v`` ``[K, in]`` and norm ``g`` ``[K, 1]``.

    Written out (rather than ``torch.nn.utils.parametrizations.weight_norm``) so that parameter names
    are stable plain tensors for EMA, DDP, ``torch.compile`` and checkpoints. With ``fix_norm=True``
    (DINO's ``norm_last_layer``) ``g`` stays 1 and is not trained.
    """

    def __init__(self, in_features: int, out_features: int, fix_norm: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not fix_norm)
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's default, as in DINO

    @property
    def weight(self) -> Tensor:
        return self.weight_g * F.normalize(self.weight_v, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINO projection head: ``[N, in_dim] -> [N, out_dim]``.

    Args:
        in_dim: backbone feature size D.
        out_dim: number of prototypes K (DINO default 65536; the ChAda-ViT authors used 4096).
        hidden_dim / bottleneck_dim / nlayers: MLP shape (``nlayers`` >= 1 linear layers).
        use_bn: BatchNorm in the MLP (DINO's default for ViTs is off).
        norm_last_layer: keep the norm of the last layer's rows at 1 (more stable, DINO default).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        for name, v in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
        ):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2:
            raise ValueError(f"DINOHead expects [N, D] features, got shape {tuple(x.shape)}")
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


def backbone_dim(backbone: nn.Module) -> int:
    """Feature size D of a backbone: ``embed_dim`` (or ``num_features``)."""
    for attr in ("num_features", "embed_dim"):
        value = getattr(backbone, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise TypeError(
        f"{type(backbone).__name__} has no integer `num_features`/`embed_dim` attribute: cannot size the DINO head"
    )


def concat_channel_batches(batches: Sequence[ChannelBatch]) -> ChannelBatch:
    """Stack several ChannelBatches of the same H, W into one (images of batch 0 first)."""
    if not batches:
        raise ValueError("no batches to concatenate")
    if len(batches) == 1:
        return batches[0]
    sizes = {b.image_size for b in batches}
    if len(sizes) != 1:
        raise ValueError(f"cannot concatenate ChannelBatches of different sizes {sorted(sizes)}")
    ids = None
    if any(b.channel_ids is not None for b in batches):
        ids = torch.cat([b.resolved_channel_ids() for b in batches])
    # host-side counts and id ranges carried over: checking the concatenation reads nothing back from a GPU
    ranges = [b.host_id_range if b.channel_ids is not None else (0, b.max_channels - 1) for b in batches]
    host_range = None
    if ids is not None and all(r is not None for r in ranges):
        host_range = (min(r[0] for r in ranges if r), max(r[1] for r in ranges if r))
    return ChannelBatch(
        torch.cat([b.pixels for b in batches]), torch.cat([b.counts for b in batches]), ids,
        host_counts=sum((tuple(b.host_counts or ()) for b in batches), ()), host_id_range=host_range,
        finite_checked=all(b.finite_checked for b in batches),
    )  # fmt: skip


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of views.

    ``forward(views)`` takes a list of V ChannelBatches (each ``B`` images, view ``v`` of every image)
    and returns ``[V * B, K]`` head outputs, view-major (rows ``v*B .. v*B+B-1`` are view ``v``).
    Consecutive views of equal size go through the backbone in one call, so the global crops and the
    local crops cost one forward each. ``pool`` (if not None) is passed as ``backbone(batch, pool=pool)``,
    e.g. ``"mean"`` for the one-channel ViT whose default embedding size depends on the channel count.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, pool: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pool = pool

    def forward(self, views: Sequence[ChannelBatch] | ChannelBatch) -> Tensor:
        if isinstance(views, ChannelBatch):
            views = [views]
        if not views:
            raise ValueError("MultiCropWrapper needs at least one view")
        feats: list[Tensor] = []
        start = 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].image_size == views[start].image_size:
                end += 1
            batch = concat_channel_batches(views[start:end])
            out = self.backbone(batch) if self.pool is None else self.backbone(batch, pool=self.pool)
            if isinstance(out, (tuple, list)):
                out = out[0]
            if out.ndim != 2:
                raise ValueError(f"backbone must return [B, D] features, got shape {tuple(out.shape)}")
            feats.append(out)
            start = end
        return self.head(torch.cat(feats))


class DINOLoss(nn.Module):
    """DINO cross-view loss with an EMA center.

    ``forward(student_out [V*B, K], teacher_out [G*B, K], teacher_temp)`` returns the scalar loss
    averaged over all (teacher view, student view) pairs with different indices, and updates the center.
    Outputs are cast to float32 whatever the autocast dtype.

    Args:
        out_dim: K.
        n_global: G, number of global views (the teacher sees only these).
        student_temp: student softmax temperature (0.1).
        center_momentum: EMA momentum of the center (0.9).
    """

    center: Tensor

    def __init__(
        self, out_dim: int, n_global: int = 2, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        if n_global < 1:
            raise ValueError("n_global must be >= 1")
        self.out_dim = out_dim
        self.n_global = n_global
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_out: Tensor, teacher_temp: float) -> Tensor:
        """``[G*B, K]`` centred, sharpened teacher distribution."""
        return F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1)

    def forward(
        self, student_out: Tensor, teacher_out: Tensor, teacher_temp: float, update_center: bool = True
    ) -> Tensor:
        if student_out.ndim != 2 or teacher_out.ndim != 2 or student_out.shape[1] != self.out_dim:
            raise ValueError(
                f"expected student [V*B, {self.out_dim}] and teacher [G*B, {self.out_dim}], got "
                f"{tuple(student_out.shape)} and {tuple(teacher_out.shape)}"
            )
        if teacher_out.shape[0] % self.n_global:
            raise ValueError(
                f"teacher rows ({teacher_out.shape[0]}) are not a multiple of n_global={self.n_global}"
            )
        batch = teacher_out.shape[0] // self.n_global
        if student_out.shape[0] % batch:
            raise ValueError(
                f"student rows ({student_out.shape[0]}) are not a multiple of the batch size {batch}"
            )
        n_views = student_out.shape[0] // batch
        if n_views < 2:
            raise ValueError("DINO needs at least 2 views (each teacher view is compared with the others)")
        student_logp = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(n_views)
        teacher_p = self.teacher_probs(teacher_out, teacher_temp).detach().chunk(self.n_global)
        total = student_out.new_zeros((), dtype=torch.float32)
        n_terms = 0
        for iq, q in enumerate(teacher_p):
            for v in range(n_views):
                if v == iq:  # same view seen by teacher and student: skipped, as in DINO
                    continue
                total = total + torch.sum(-q * student_logp[v], dim=-1).mean()
                n_terms += 1
        if update_center:
            self.update_center(teacher_out)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        """EMA of the teacher's mean output, averaged over every process when distributed."""
        batch_center = teacher_out.float().sum(dim=0, keepdim=True)
        count = batch_center.new_full((1,), float(teacher_out.shape[0]))  # filled on the device: no copy
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))

    @torch.no_grad()
    def stats(self, student_out: Tensor, teacher_out: Tensor, teacher_temp: float) -> dict[str, float]:
        """Collapse diagnostics on the global views (call BEFORE the center update of this step).

        - ``teacher_entropy``: mean per-sample entropy of the teacher distribution (nats); ``log K``
          means uniform outputs (collapse to uniform).
        - ``teacher_batch_entropy``: entropy of the batch-mean teacher distribution; near 0 means every
          input goes to the same prototype (collapse to one dimension).
        - ``kl``: mean KL(teacher || student) over the global-view pairs; near 0 at either collapse.
        """
        q = self.teacher_probs(teacher_out, teacher_temp)
        logq = torch.log(q.clamp_min(1e-12))
        ent = -(q * logq).sum(-1).mean()
        mean_q = q.mean(0)
        batch_ent = -(mean_q * torch.log(mean_q.clamp_min(1e-12))).sum()
        g_rows = teacher_out.shape[0]
        logp = F.log_softmax(student_out[:g_rows].float() / self.student_temp, dim=-1)
        kl = (q * (logq - logp)).sum(-1).mean()
        return {
            "teacher_entropy": float(ent),
            "teacher_batch_entropy": float(batch_ent),
            "kl": float(kl),
            "max_entropy": math.log(self.out_dim),
        }


def collapse_kind(
    stats: dict[str, float], kl_eps: float = 1e-3, uniform_frac: float = 0.98, onehot_frac: float = 0.05
) -> str | None:
    """``"uniform"``, ``"one_prototype"`` or ``None`` from :meth:`DINOLoss.stats` values.

    Uniform collapse: per-sample teacher entropy above ``uniform_frac * log K`` with a vanishing KL.
    One-prototype collapse: the batch-mean distribution's entropy below ``onehot_frac * log K``
    (every image picks the same prototype).
    """
    h_max = stats["max_entropy"]
    if stats["teacher_entropy"] > uniform_frac * h_max and stats["kl"] < kl_eps:
        return "uniform"
    if stats["teacher_batch_entropy"] < onehot_frac * h_max:
        return "one_prototype"
    return None
