"""The DINO checkpoint: reading it safely, and every RNG of a rank as plain tensors.

``checkpoint.pt`` holds student, teacher, optimizer, DINO center, epoch/step, the config, and one RNG
entry per rank (``state["rng"][rank]``), all as tensors and plain containers: it is read back with
``torch.load(weights_only=True)``, so a tampered file cannot run code.

Each rank's entry holds its CPU, NumPy and Python generators and, on a GPU run, the generator of the
rank's **own** CUDA device only (``{"device": index, "state": ByteTensor}``). A resumed rank restores
its own entry, whatever number of GPUs the process sees now. A rank that did not exist when the
checkpoint was written (a resume with more processes, allowed with ``--resume-allow-changes
world_size``) gets what a fresh run's rank gets: every generator seeded from ``seed + 1000 * (rank +
1)``, with a warning; it never shares another rank's stream.
"""

from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_FORMAT",
    "load_checkpoint",
    "check_output_dir",
    "rank_seed",
    "rng_state",
    "set_rng_state",
    "restore_rank_rng",
    "write_checkpoint",
    "load_module_states",
]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "chada-dino/2"  # /1 pickled numpy/python RNG objects: not loadable with weights_only


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s stochastic layers (drop path) in a fresh run."""
    return seed + 1000 * (rank + 1)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNGs as tensors and plain values (loadable with ``weights_only=True``).

    ``device``: the rank's own device; when it is a CUDA device its generator is saved with its index.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": [int(w) for w in words], "gauss_next": gauss_next},
    }  # fmt: skip
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        state["cuda"] = {"device": int(index), "state": torch.cuda.get_rng_state(index).cpu()}
    return state


def _cpu_bytes(t: Any) -> torch.Tensor:
    # set_rng_state wants a CPU ByteTensor, whatever device a loader mapped the checkpoint to.
    return torch.as_tensor(t).detach().to(device="cpu", dtype=torch.uint8)


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the RNGs of :func:`rng_state`; the CUDA generator goes to ``device`` (this rank's own).

    A checkpoint from a CPU run has no CUDA entry: the CUDA generator is then left as it is. Older
    checkpoints saved every visible GPU's state as a list: the entry of the rank's own device index is
    restored when the list has one, else none (with a warning).
    """
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    n = state["numpy"]
    keys = np.asarray(torch.as_tensor(n["keys"]).cpu().numpy(), dtype=np.uint32)
    np.random.set_state((n["kind"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(w) for w in py["state"]), py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is None or device.type != "cuda":
        return
    index = torch.cuda.current_device() if device.index is None else device.index
    saved = cuda["state"] if isinstance(cuda, dict) else (cuda[index] if index < len(cuda) else None)
    if saved is None:
        log.warning("the checkpoint has no CUDA RNG state for cuda:%d: its generator is not restored", index)
        return
    torch.cuda.set_rng_state(_cpu_bytes(saved), index)


def restore_rank_rng(states: list[dict[str, Any]], rank: int, seed: int, device: torch.device) -> None:
    """Restore rank ``rank``'s own RNG entry of a checkpoint; a rank beyond them gets a fresh rank's seed."""
    if rank < len(states):
        set_rng_state(states[rank], device)
        return
    if states:
        log.warning(
            "rank %d did not exist when the checkpoint was written (%d rank(s)): its generators start from "
            "seed %d, as in a fresh run, so the resumed run is not the uninterrupted one",
            rank, len(states), rank_seed(seed, rank),
        )  # fmt: skip
    torch.manual_seed(rank_seed(seed, rank))  # seeds the CPU and every CUDA generator


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
    missing = [
        k for k in ("student", "teacher", "optimizer", "dino_loss", "config", "global_step") if k not in state
    ]
    if missing:
        raise ValueError(f"{path} lacks {missing}: it is incomplete; delete it to start the run over")
    return state


def write_checkpoint(
    path: Path, state: dict[str, Any], device: torch.device, distributed: bool, is_main: bool
) -> Path | None:
    """Every rank calls this: the ranks' RNG states are gathered into ``state["rng"][rank]``, then
    rank 0 writes ``state`` to ``path`` atomically (the other ranks return None)."""
    from chada.io import atomic_write_bytes

    rng = rng_state(device)
    if distributed:
        import torch.distributed as dist

        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, rng)
    else:
        gathered = [rng]
    if not is_main:
        return None
    buf = io.BytesIO()
    torch.save({**state, "rng": gathered}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_module_states(path: Path, state: dict[str, Any], targets: dict[str, Any]) -> None:
    """``targets[key].load_state_dict(state[key])`` for each key; a mismatch names the file and what to do."""
    try:
        for key, target in targets.items():
            target.load_state_dict(state[key])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(
            f"{path} does not fit this run's model ({first}); use the config it was written with, or "
            "choose another run.output_dir"
        ) from None


def check_output_dir(out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a run: a checkpoint without ``resume``, or a finished run's ``teacher/``."""
    ckpt_path = out_dir / CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise ValueError(
            f"{ckpt_path} exists: pass --resume to continue that run, or choose another run.output_dir"
        )
    if ckpt_path.exists() and ckpt_path.is_dir():
        raise ValueError(f"{ckpt_path} is a directory, not a checkpoint; choose another run.output_dir")
    if not ckpt_path.exists() and (out_dir / "teacher" / "config.json").exists():
        raise ValueError(
            f"{out_dir} holds a finished run's teacher/ but no {CHECKPOINT_NAME}: a new run would "
            "overwrite it; choose another run.output_dir"
        )
