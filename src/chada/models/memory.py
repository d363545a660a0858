"""How much memory this machine has, and how much a forward pass needs (estimates made before allocating).

:func:`machine_memory` is the physical memory (``os.sysconf``, else ``/proc/meminfo``) or, for a
CUDA device, the device's total memory (``torch.cuda.mem_get_info``). :func:`forward_bytes` is the
peak memory of one pre-norm transformer block over ``T`` tokens at float32: the residual stream,
its norm, ``qkv`` and the attention output (about ``7 T D`` values) plus the MLP's hidden layer and
its activation (``2 T Hd``). The attention scores ``heads x T^2`` are counted only where they are
materialised (``scores=True``: attention maps, the explicit softmax path). The fused kernel works
through the keys in blocks: measured with torch 2.13 on CPU (AMD EPYC, 1 thread, ``resource.getrusage``
peak RSS), ``scaled_dot_product_attention`` over T = 12,000 tokens, 3 heads of width 64 raised the
peak by 13 MB without a key mask and 11 MB more with one, where the score matrix alone is 1.7 GB.
CUDA's flash / memory-efficient kernels are built the same way (not measured here: no GPU).
"""

from __future__ import annotations

import os

import torch

__all__ = ["machine_memory", "forward_bytes", "gib"]


def machine_memory(device: str | torch.device | None = None) -> int:
    """Total bytes of memory for ``device`` (a CUDA device: its own memory; else the machine's RAM)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[1])
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**63 - 1  # unknown: do not refuse on a guess


def forward_bytes(tokens: int, dim: int, hidden: int, heads: int, batch: int = 1, bytes_per_value: int = 4,
                  scores: bool = False) -> int:  # fmt: skip
    """Peak bytes of one block's forward pass over ``batch`` sequences of ``tokens`` tokens ``[B, T, D]``."""
    per_token = 7 * dim + 2 * hidden
    total = batch * tokens * per_token * bytes_per_value
    if scores:
        total += batch * heads * tokens * tokens * bytes_per_value
    return int(total)


def gib(n_bytes: int | float) -> str:
    """``"12.3 GiB"`` (or MiB below one GiB): memory sizes in messages."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.3g} GiB"
    return f"{n_bytes / 2**20:.3g} MiB"
