"""Which GPU a torchrun process takes (``chada.ssl.distributed``), with ``torch.cuda`` and
``init_process_group`` replaced by fakes: one GPU per process, never two ranks on one GPU, and NCCL
told the device at initialisation (``device_id``)."""

from __future__ import annotations

import pytest
import torch

from chada.errors import InputError
from chada.ssl import distributed


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    """``set(n)`` fakes n visible GPUs; records set_device and init_process_group calls."""
    calls: dict[str, list] = {"set_device": [], "init": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(d))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: bool(calls["init"]))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls["init"].append(kw))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: calls["init"][-1]["rank"])
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: calls["init"][-1]["world_size"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def launch(n_gpus: int, rank: int, world: int, local_world: int | None = None) -> distributed.DistInfo:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)
        env = dict(
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(local_world or world),
        )
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        calls["init"].clear()
        return distributed.init_distributed("cuda")

    return launch, calls


def test_each_rank_takes_its_own_gpu_and_nccl_is_told(gpus) -> None:
    launch, calls = gpus
    info = launch(n_gpus=4, rank=3, world=4)
    assert info.device == torch.device("cuda", 3) and info.rank == 3 and info.world_size == 4
    assert calls["set_device"][-1] == torch.device("cuda", 3)
    (init,) = calls["init"]
    assert init["backend"] == "nccl" and init["device_id"] == torch.device("cuda", 3)


@pytest.mark.parametrize(("n_gpus", "world"), [(1, 2), (2, 4), (4, 8)])
def test_more_processes_than_gpus_is_refused_with_what_to_do(gpus, n_gpus: int, world: int) -> None:
    launch, calls = gpus
    for rank in (0, world - 1):  # every rank refuses, not only those past the last GPU
        with pytest.raises(InputError, match=rf"{world} processes on this node but {n_gpus} visible GPU"):
            launch(n_gpus=n_gpus, rank=rank, world=world)
    assert not calls["init"]


def test_one_gpu_bound_per_task_by_the_scheduler_is_used(gpus, monkeypatch: pytest.MonkeyPatch) -> None:
    launch, _ = gpus
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert launch(n_gpus=1, rank=1, world=2).device == torch.device("cuda", 0)


def test_single_process_without_torchrun(gpus) -> None:
    launch, calls = gpus
    info = launch(n_gpus=2, rank=0, world=1)
    assert info.device == torch.device("cuda", 0) and not calls["init"]
