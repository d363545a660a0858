"""Splitting one embedding run across processes: ``torchrun`` ranks or ``--shard I/N`` job arrays.

The rows' chunks (the same chunks as a one-process run) are cut into N contiguous blocks; shard I
encodes block I and writes a complete feature file of its rows, :func:`shard_path` (``OUT`` with
``.shard-I-of-N`` before the suffix), with its own resumable ``.parts`` folder, so a killed shard
resumes its own part. :func:`merge_shards` concatenates the N shard files in order into ``OUT``:
every forward pass saw the same batch as in one process, so the features are identical bit for bit
and row for row.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the shard is the rank, a process group
(gloo on CPU, nccl on CUDA) is started only for one barrier, and rank 0 merges once every rank is
done. With ``--shard I/N`` the last shard to finish merges (a lock file keeps it to one), or ``chada
embed --merge OUT`` does it later.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Shard",
    "finish_shard",
    "merge_if_complete",
    "merge_shards",
    "parse_shard",
    "shard_chunks",
    "shard_path",
    "torchrun_shard",
]

log = logging.getLogger(__name__)

Shard = tuple[int, int]


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_path(out: str | os.PathLike, shard: Shard) -> Path:
    """``emb.parquet`` -> ``emb.shard-0001-of-0004.parquet``."""
    out = Path(out)
    i, n = shard
    return out.with_name(f"{out.stem}.shard-{i:04d}-of-{n:04d}{out.suffix}")


def shard_chunks(chunks: list[np.ndarray], shard: Shard) -> dict[int, np.ndarray]:
    """``{global chunk index: rows}`` of shard ``(I, N)``: the I-th of N contiguous blocks of chunks."""
    i, n = shard
    k = len(chunks)
    if n > k:
        raise ValueError(
            f"{n} shards for {k} chunk(s) of rows: every shard needs at least one chunk; use at most {k} "
            "shards or a smaller --chunk-batches"
        )
    lo, hi = i * k // n, (i + 1) * k // n
    return {j: chunks[j] for j in range(lo, hi)}


def torchrun_shard(device: str) -> tuple[Shard | None, str]:
    """``((rank, world size), device)`` under torchrun (``cuda`` becomes ``cuda:LOCAL_RANK``), else ``(None, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, device
    rank = int(os.environ["RANK"])
    if str(device).startswith("cuda") and ":" not in str(device):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return (rank, world), device


def barrier(device: str) -> None:
    """Wait for every torchrun rank (the process group is made here on first use)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(torch.device(device))
        # ranks finish their blocks minutes apart on real data: a day before the barrier gives up
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=24))
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _merge_info(infos: list[dict[str, Any]], n_rows: int) -> dict[str, Any]:
    info = dict(infos[0])
    info["n_images"] = sum(int(x.get("n_images") or 0) for x in infos)
    info["seconds"] = round(max(float(x.get("seconds") or 0) for x in infos), 3)
    info["shards"] = len(infos)
    info.pop("shard", None)
    info["n_rows"] = n_rows
    return info


def merge_shards(out: str | os.PathLike, n: int | None = None, remove: bool = True) -> Path:
    """Concatenate the shard files of ``out`` (all N of them; N found from the files when None) into ``out``.

    ``.parquet`` is streamed one row group at a time; ``.npz`` / ``.h5ad`` are assembled in memory.
    Raises FileNotFoundError naming the missing shards.
    """
    from chada.encode.store import EmbeddingSet, load_embeddings, save_embeddings

    out = Path(out)
    if n is None:
        found = sorted(out.parent.glob(f"{out.stem}.shard-*-of-*{out.suffix}"))
        counts = {int(re.search(r"-of-(\d+)", p.name).group(1)) for p in found}  # type: ignore[union-attr]
        if len(counts) != 1:
            raise FileNotFoundError(
                f"no single set of shard files for {out} (found {[p.name for p in found]})"
            )
        n = counts.pop()
    paths = [shard_path(out, (i, n)) for i in range(n)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"cannot merge {out}: shard file(s) {', '.join(missing)} not written yet")
    if out.suffix.lower() == ".parquet":
        _merge_parquet(out, paths)
    else:
        import pandas as pd

        sets = [load_embeddings(p) for p in paths]
        feats = {k: np.concatenate([s.features[k] for s in sets]) for k in sets[0].features}
        meta = pd.concat([s.meta for s in sets], ignore_index=True)
        save_embeddings(EmbeddingSet(feats, meta, _merge_info([s.info for s in sets], len(meta))), out)
    if remove:
        for p in paths:
            p.unlink(missing_ok=True)
    log.info("merged %d shard files into %s", n, out)
    return out


def _merge_parquet(out: Path, paths: list[Path]) -> None:
    import json

    import pyarrow.parquet as pq

    from chada.encode.formats import KEY, _temp

    files = [pq.ParquetFile(p) for p in paths]
    infos = [json.loads(f.schema_arrow.metadata[KEY.encode()]) for f in files]
    rows = sum(f.metadata.num_rows for f in files)
    info = _merge_info(infos, rows)
    schema = files[0].schema_arrow.with_metadata({KEY: json.dumps(info, default=str)})
    tmp = _temp(out)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for f in files:
                for g in range(f.num_row_groups):
                    writer.write_table(
                        f.read_row_group(g).replace_schema_metadata(schema.metadata).cast(schema)
                    )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def merge_if_complete(out: str | os.PathLike, shard: Shard) -> Path | None:
    """Merge ``out`` when every shard file exists (the last shard to finish); a lock file beside ``out``
    lets one process merge when shards finish together. None when shards are missing or locked."""
    n = shard[1]
    if any(not shard_path(out, (i, n)).exists() for i in range(n)):
        return None
    lock = Path(str(out) + ".merging")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return None
    try:
        return merge_shards(out, n)
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def finish_shard(out: str | os.PathLike, shard: Shard, device: str, distributed: bool) -> Path | None:
    """After a shard's file is written: under torchrun wait for every rank and merge on rank 0; with
    ``--shard`` merge if this was the last shard. Returns the merged path, or None."""
    if not distributed:
        return merge_if_complete(out, shard)
    try:
        barrier(device)
        merged = merge_shards(out, shard[1]) if shard[0] == 0 else None
        barrier(device)  # the other ranks return only once the final file exists
        return merged
    finally:
        finish_distributed()
