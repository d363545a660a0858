"""torch.distributed helpers for ``torchrun`` launches (single process when not launched by it).

``torchrun --nproc_per_node=N`` (or any launcher exporting ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) makes :func:`init_distributed` create the default process group:
NCCL when the process has a GPU, gloo on CPU. Without those variables everything runs in one process
and the helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from chada.errors import InputError

__all__ = ["DistInfo", "init_distributed", "is_distributed", "barrier", "cleanup", "broadcast_object"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _cuda_device(local_rank: int) -> torch.device:
    """This process's GPU: one per process on a node, never shared. Two ranks on one GPU make NCCL
    fail with "Duplicate GPU detected" (or hang), so more processes on a node than visible GPUs is
    refused here, with what to do. One exception: each process sees exactly one GPU and
    ``CUDA_VISIBLE_DEVICES`` is set, the way a scheduler binds one GPU per task; that GPU is used."""
    n_gpus = torch.cuda.device_count()
    per_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), local_rank + 1)
    if per_node <= n_gpus:
        return torch.device("cuda", local_rank)
    if n_gpus == 1 and os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return torch.device("cuda", 0)
    raise InputError(
        f"{per_node} processes on this node but {n_gpus} visible GPU(s): ranks cannot share a GPU; launch "
        f"with torchrun --nproc_per_node={max(n_gpus, 1)} (or fewer), or bind one GPU per process with "
        "CUDA_VISIBLE_DEVICES, or set run.device=cpu"
    )


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("run.device is 'cuda' but no CUDA device is available")
        return _cuda_device(local_rank)
    if device != "auto":
        raise InputError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if torch.cuda.is_available():
        return _cuda_device(local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Join the process group if launched by torchrun (env vars present), else single process.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        backend: force a backend; default NCCL for CUDA, gloo for CPU.
    Raises:
        InputError: more processes on this node than visible GPUs, or ``"cuda"`` without a GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = _pick_device(device, local_rank)
    if world > 1:
        extra: dict[str, object] = {}
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            extra["device_id"] = dev  # binds NCCL's communicator to this GPU at once (no guessing)
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend or ("nccl" if dev.type == "cuda" else "gloo"),
                rank=rank,
                world_size=world,
                **extra,
            )
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s value on every rank (identity when single-process)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
