"""Varlen attention's bookkeeping: one packed ``[T, D]`` token matrix holding every image back to back.

``T`` tokens in ``S`` sequences (one per image), ``h`` heads, ``hd`` head width. On a CUDA GPU of
compute capability >= 8.0, in fp16/bf16, attention is one ``torch.nn.attention.varlen.varlen_attn``
call per block; elsewhere (CPU, CUDA fp32, V100/T4) the sequences are grouped by length and each group
runs as one dense batch (:func:`chada.models.layers.attention`, the same kernels as ``packed``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

DenseAttention = Callable[[Tensor, Tensor, Tensor], Tensor]

__all__ = ["VarlenSegments", "varlen_kernel_supported", "VARLEN_MIN_CAPABILITY"]


def _varlen_kernel_available(q: Tensor) -> bool:
    """``varlen_attn`` (FlashAttention varlen) runs on CUDA in fp16/bf16 only (torch 2.13), for head
    widths that are a multiple of 8 up to 256 (the GPU's generation: :func:`varlen_kernel_supported`)."""
    hd = q.shape[-1]
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and hd % 8 == 0 and hd <= 256):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


# FlashAttention (and so varlen_attn) needs an Ampere or newer GPU; V100 (7.0) and T4 (7.5) lack it.
VARLEN_MIN_CAPABILITY = (8, 0)
_capability_cache: dict[int, bool] = {}


def varlen_kernel_supported(device: torch.device | str) -> bool:
    """Whether ``device`` can run the varlen kernel at all: a CUDA GPU of compute capability >= 8.0.

    Asked once per GPU, outside any compiled block (the answer is stored on :class:`VarlenSegments`);
    below 8.0 the varlen mode runs the grouped fallback, the same kernels as ``packed``.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _capability_cache:
        _capability_cache[index] = tuple(torch.cuda.get_device_capability(index)) >= VARLEN_MIN_CAPABILITY
    return _capability_cache[index]


class VarlenSegments:
    """How a packed ``[T, ...]`` token sequence splits into independent sequences (one per image).

    Sequence ``i`` holds rows ``cu_seqlens[i]:cu_seqlens[i + 1]``. The CPU (and CUDA fp32) fallback
    gathers the rows of all sequences of one length into a dense ``[G, L]`` batch: ``order`` lists the
    rows group after group, ``groups`` gives ``(L, G)`` per group in that order, and ``inverse`` puts
    the concatenated group outputs back into packed order. Those index lists cover every token, so
    they are built only when the fallback runs, never for the fused kernel.

    Attributes:
        lengths: ``S`` host ints, the sequences' lengths.
        cu_seqlens: int32 ``[S + 1]`` on the tokens' device.
        seq_lengths: long ``[S]`` on the tokens' device (drop path; no host-to-device copy per block).
        max_len, total: host ints.
        kernel_device: the tokens' device can run the fused varlen kernel.
    """

    def __init__(
        self, lengths: list[int], device: torch.device | str, seq_lengths: Tensor | None = None
    ) -> None:
        if not lengths or min(lengths) < 1:
            raise ValueError(f"every sequence needs at least one token, got lengths {lengths}")
        device = torch.device(device)
        if seq_lengths is None:
            from chada.models.batch import host_to_device

            seq_lengths = host_to_device(list(lengths), device)
        self.lengths = list(lengths)
        self.seq_lengths = seq_lengths
        self.cu_seqlens = F.pad(torch.cumsum(seq_lengths, 0), (1, 0)).to(torch.int32)
        self.max_len = max(lengths)
        self.total = int(sum(lengths))
        self.kernel_device = varlen_kernel_supported(device)
        self._device = device
        self._grouping: tuple[Tensor | None, Tensor | None, list[tuple[int, int]]] | None = None

    @classmethod
    def from_lengths(
        cls, lengths: list[int], device: torch.device | str, seq_lengths: Tensor | None = None
    ) -> VarlenSegments:
        """Segments of ``lengths`` (host ints); ``seq_lengths`` is the same on ``device`` when the caller
        already has it there."""
        return cls(lengths, device, seq_lengths)

    def _group(self) -> tuple[Tensor | None, Tensor | None, list[tuple[int, int]]]:
        if self._grouping is None:
            starts = [0]
            for n in self.lengths:
                starts.append(starts[-1] + n)
            by_len: dict[int, list[int]] = {}
            for i, n in enumerate(self.lengths):
                by_len.setdefault(n, []).append(i)
            groups = [(n, len(members)) for n, members in sorted(by_len.items())]
            rows = [
                r
                for n, members in sorted(by_len.items())
                for i in members
                for r in range(starts[i], starts[i] + n)
            ]
            order = inverse = None
            if rows != list(range(starts[-1])):
                order = torch.tensor(rows, dtype=torch.long).to(self._device)
                inverse = torch.empty_like(order)
                inverse[order] = torch.arange(order.numel(), device=self._device)
            self._grouping = (order, inverse, groups)
        return self._grouping

    @property
    def order(self) -> Tensor | None:
        """long ``[T]`` rows in group order; None when the packed order already is group order."""
        return self._group()[0]

    @property
    def inverse(self) -> Tensor | None:
        return self._group()[1]

    @property
    def groups(self) -> list[tuple[int, int]]:
        return self._group()[2]

    def cls_rows(self) -> Tensor:
        """``[S]`` long: the first row of every sequence."""
        return self.cu_seqlens[:-1].long()

    def grouped_attention(
        self, q: Tensor, k: Tensor, v: Tensor, want_cls_row: bool, dense: DenseAttention | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Reference varlen attention: ``q, k, v [T, h, hd]`` -> ``out [T, h, hd]`` and, when asked, the
        softmax row of every sequence's first query (its CLS) over its own keys, ``[S, h, max_len]``
        (zeros past each sequence's end). ``dense`` runs one group ``[G, h, n, hd]`` (default SDPA;
        :class:`chada.models.layers.Attention` passes :func:`chada.models.layers.attention`)."""
        attention = dense or F.scaled_dot_product_attention
        if self.order is not None:
            q, k, v = (t.index_select(0, self.order) for t in (q, k, v))
        outs: list[Tensor] = []
        cls_rows: list[Tensor] = []
        start = 0
        for n, G in self.groups:
            sl = slice(start, start + n * G)
            qg, kg, vg = (
                t[sl].reshape(G, n, *t.shape[1:]).transpose(1, 2) for t in (q, k, v)
            )  # [G, h, n, hd]
            if want_cls_row:
                w = ((qg * qg.shape[-1] ** -0.5) @ kg.transpose(-2, -1)).softmax(dim=-1)
                og = w @ vg
                cls_rows.append(F.pad(w[:, :, 0, :], (0, self.max_len - n)))
            else:
                og = attention(qg, kg, vg)
            outs.append(og.transpose(1, 2).reshape(G * n, *q.shape[1:]))
            start += n * G
        out = torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
        if self.inverse is not None:
            out = out.index_select(0, self.inverse)
        cls_w = None
        if want_cls_row:
            cls_w = torch.cat(cls_rows, dim=0)  # sequences in group order
            seq_order = [i for n, _ in self.groups for i, m in enumerate(self.lengths) if m == n]
            inv = torch.empty(len(seq_order), dtype=torch.long, device=cls_w.device)
            inv[torch.tensor(seq_order, device=cls_w.device)] = torch.arange(
                len(seq_order), device=cls_w.device
            )
            cls_w = cls_w.index_select(0, inv)
        return out, cls_w

    def attention(
        self, q: Tensor, k: Tensor, v: Tensor, want_cls_row: bool = False, dense: DenseAttention | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Varlen attention of ``q, k, v [T, h, hd]``: the fused varlen kernel where it exists, else
        :meth:`grouped_attention` with ``dense``."""
        if not want_cls_row and self.kernel_device and _varlen_kernel_available(q):
            from torch.nn.attention.varlen import varlen_attn

            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            return varlen_attn(q, k, v, self.cu_seqlens, self.cu_seqlens, self.max_len, self.max_len), None
        return self.grouped_attention(q, k, v, want_cls_row, dense)
