"""Each rank's own CUDA RNG state in the DINO checkpoint, with torch.cuda replaced by fakes (CPU only).

A GPU run used to save every visible GPU's generator (``get_rng_state_all``) and restore them all: a
run saved with 8 visible GPUs and resumed where a process sees one ended in an IndexError, and with
more processes than saved entries two ranks shared one stream (``rank % len``).
"""

from __future__ import annotations

import logging

import pytest
import torch

from chada.ssl import checkpoint as ckpt


class FakeCuda:
    """``visible`` GPUs, each with its own generator state (a distinct 16-byte tensor)."""

    def __init__(self, visible: int) -> None:
        self.visible = visible
        self.states = {i: torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(visible)}
        self.seeded: list[int] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.visible)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)
        monkeypatch.setattr(
            torch.cuda, "get_rng_state_all", lambda: [self.get(i) for i in range(self.visible)]
        )
        monkeypatch.setattr(
            torch.cuda, "set_rng_state_all", lambda ts: [self.set(t, i) for i, t in enumerate(ts)]
        )
        real_seed = torch.manual_seed

        def manual_seed(seed: int):
            self.seeded.append(int(seed))
            for i in self.states:  # torch.manual_seed seeds every CUDA generator too
                self.states[i] = torch.full((16,), seed % 256, dtype=torch.uint8)
            return real_seed(seed)

        monkeypatch.setattr(torch, "manual_seed", manual_seed)

    def _index(self, device) -> int:
        index = torch.device(device).index if not isinstance(device, int) else device
        index = 0 if index is None else index
        if index >= self.visible:
            raise IndexError(f"cuda:{index} with {self.visible} visible GPU(s)")
        return index

    def get(self, device="cuda") -> torch.Tensor:
        return self.states[self._index(device)].clone()

    def set(self, state: torch.Tensor, device="cuda") -> None:
        assert state.device.type == "cpu" and state.dtype == torch.uint8
        self.states[self._index(device)] = state.clone()


@pytest.fixture(autouse=True)
def _keep_global_rngs():
    """restore_rank_rng sets torch's, NumPy's and Python's global generators: put them back after."""
    import random

    import numpy as np

    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    yield
    torch.set_rng_state(saved[0])
    np.random.set_state(saved[1])
    random.setstate(saved[2])


def _save_ranks(world: int, visible: int, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The ``rng`` list a ``world``-rank job writes, rank r on cuda:r (or cuda:0 for one process)."""
    fake = FakeCuda(visible)
    fake.install(monkeypatch)
    return [ckpt.rng_state(torch.device("cuda", r % visible)) for r in range(world)]


def test_saved_with_8_visible_gpus_resumes_where_one_is_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    states = _save_ranks(world=1, visible=8, monkeypatch=monkeypatch)
    assert states[0]["cuda"]["device"] == 0 and torch.equal(states[0]["cuda"]["state"], torch.full((16,), 10))
    one = FakeCuda(visible=1)
    one.install(monkeypatch)
    one.states[0] = torch.zeros(16, dtype=torch.uint8)
    ckpt.restore_rank_rng(states, rank=0, seed=0, device=torch.device("cuda", 0))  # was: IndexError
    assert torch.equal(one.states[0], torch.full((16,), 10, dtype=torch.uint8)) and not one.seeded


def test_each_of_8_ranks_restores_its_own_gpu_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    states = _save_ranks(world=8, visible=8, monkeypatch=monkeypatch)
    assert [s["cuda"]["device"] for s in states] == list(range(8))
    for rank in range(8):
        fresh = FakeCuda(visible=8)
        fresh.install(monkeypatch)
        ckpt.restore_rank_rng(states, rank=rank, seed=0, device=torch.device("cuda", rank))
        assert torch.equal(fresh.states[rank], torch.full((16,), 10 + rank, dtype=torch.uint8)), rank


def test_old_checkpoints_with_every_visible_gpu_restore_the_ranks_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = _save_ranks(world=1, visible=1, monkeypatch=monkeypatch)[0]
    old["cuda"] = [
        torch.full((16,), 30 + i, dtype=torch.uint8) for i in range(8)
    ]  # get_rng_state_all, 8 GPUs
    one = FakeCuda(visible=1)
    one.install(monkeypatch)
    ckpt.restore_rank_rng([old], rank=0, seed=0, device=torch.device("cuda", 0))
    assert torch.equal(one.states[0], torch.full((16,), 30, dtype=torch.uint8))


def test_saved_with_one_gpu_resumed_with_8_ranks(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Ranks 1..7 did not exist: each gets a fresh run's seed (seed + 1000 * (rank + 1)) on its own GPU and
    the CPU, with a warning, and none replays rank 0's stream. One process per rank: one fake each."""
    states = _save_ranks(world=1, visible=1, monkeypatch=monkeypatch)
    own, cpu_streams, seeded = [], [], []
    with caplog.at_level(logging.WARNING, logger="chada.ssl.checkpoint"):
        for rank in range(8):
            process = FakeCuda(visible=8)
            process.install(monkeypatch)
            ckpt.restore_rank_rng(states, rank=rank, seed=5, device=torch.device("cuda", rank))
            own.append(bytes(process.states[rank].numpy()))
            cpu_streams.append(bytes(torch.get_rng_state().numpy()))
            seeded += process.seeded
    assert seeded == [5 + 1000 * (r + 1) for r in range(1, 8)]
    assert own[0] == bytes(range(10, 11)) * 16  # rank 0: its own saved stream
    assert len(set(own)) == 8 and len(set(cpu_streams)) == 8  # eight different GPU and CPU streams
    assert sum("did not exist" in r.getMessage() for r in caplog.records) == 7


def test_a_cpu_run_saves_no_cuda_state_and_leaves_the_gpu_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCuda(visible=2)
    fake.install(monkeypatch)
    state = ckpt.rng_state(torch.device("cpu"))
    assert "cuda" not in state
    before = {i: t.clone() for i, t in fake.states.items()}
    torch.rand(3)
    ckpt.restore_rank_rng([state], rank=0, seed=0, device=torch.device("cuda", 1))
    assert all(torch.equal(before[i], fake.states[i]) for i in before)
