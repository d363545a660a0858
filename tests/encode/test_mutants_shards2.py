"""Sharded runs (chada.encode.shards), the parts the first mutation run left untested: the torchrun
barrier's calls on CUDA and CPU (torch.distributed replaced by recorders), the merged info's rounding
and defaults, and the streamed Parquet merge (one row group per shard row group, a column typed by the
first shard, the log line) (issue 26 item 10)."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from chada.encode import shards as sh
from chada.encode.store import EmbeddingSet, load_embeddings


@pytest.fixture
def recorded(monkeypatch):
    """torch.distributed and the CUDA device calls replaced by a recorder; returns (calls, set backend)."""
    import torch
    import torch.distributed as dist

    calls: list[tuple] = []
    state = {"initialized": False, "backend": "gloo"}
    monkeypatch.setattr(dist, "is_initialized", lambda: state["initialized"])
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend, kw)))
    monkeypatch.setattr(dist, "get_backend", lambda: state["backend"])
    monkeypatch.setattr(dist, "barrier", lambda *a, **kw: calls.append(("barrier", a, kw)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    return calls, state


def test_barrier_on_cuda_sets_the_device_starts_nccl_for_a_day_and_waits_on_that_device(recorded):
    import torch

    calls, state = recorded
    state["backend"] = "nccl"
    sh.barrier("cuda:3")
    assert calls == [
        ("set_device", torch.device("cuda:3")),
        ("init", "nccl", {"timeout": timedelta(hours=24)}),
        ("barrier", (), {"device_ids": [3]}),
    ]


def test_barrier_on_cpu_starts_gloo_once_and_waits_without_a_device(recorded):
    calls, state = recorded
    sh.barrier("cpu")
    assert calls == [("init", "gloo", {"timeout": timedelta(hours=24)}), ("barrier", (), {})]
    calls.clear()
    state["initialized"] = True
    sh.barrier("cpu")  # the group exists: only the barrier
    assert calls == [("barrier", (), {})]


def test_merge_info_rounds_to_milliseconds_and_counts_a_missing_time_as_zero():
    infos = [{"n_images": 1, "seconds": 0.1234567}, {"n_images": 2}]  # no "shard" key: nothing to drop
    assert sh._merge_info(infos, 3) == {"n_images": 3, "seconds": 0.123, "shards": 2, "n_rows": 3}
    assert sh._merge_info([{}, {}], 0) == {"n_images": 0, "seconds": 0.0, "shards": 2, "n_rows": 0}


def _parquet_shards(tmp_path, wells):
    out = tmp_path / "emb.parquet"
    n = len(wells)
    for i, w in enumerate(wells):
        meta = pd.DataFrame({"image_id": [f"s{i}a", f"s{i}b"], "well": w})
        EmbeddingSet({"cls": np.full((2, 2), i, np.float32)}, meta,
                     {"model": "m", "n_images": 2, "seconds": 1.0, "shard": [i, n]}).save(sh.shard_path(out, (i, n)))  # fmt: skip
    return out


def test_parquet_merge_streams_row_groups_casts_to_the_first_shards_types_and_logs(tmp_path, caplog):
    """Shard 1's ``well`` has no value (arrow types it null); the merged file keeps shard 0's string
    type. Each shard file's row group becomes one row group of the merged file (nothing is loaded
    whole), and the chada metadata is the merged info."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = _parquet_shards(tmp_path, [["A1", "A2"], [None, None], ["B1", None]])
    assert pq.read_schema(sh.shard_path(out, (1, 3))).field("well").type == pa.null()
    with caplog.at_level("INFO", logger="chada.encode.shards"):
        assert sh.merge_shards(out) == out
    assert caplog.messages == [f"merged 3 shard files into {out}"]
    f = pq.ParquetFile(out)
    assert f.num_row_groups == 3 and [f.metadata.row_group(g).num_rows for g in range(3)] == [2, 2, 2]
    assert f.schema_arrow.field("well").type == pa.string()
    info = json.loads(f.schema_arrow.metadata[b"chada"])
    assert {k: info[k] for k in ("n_images", "shards", "n_rows")} == {"n_images": 6, "shards": 3, "n_rows": 6}
    assert "shard" not in info
    emb = load_embeddings(out)
    assert emb.meta["well"].tolist() == ["A1", "A2", None, None, "B1", None]
    assert emb.get()[:, 1].tolist() == [0, 0, 1, 1, 2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet"]  # no temp file, no shard left


def _npz_shards(tmp_path, n, name="emb"):
    out = tmp_path / f"{name}.npz"
    for i in range(n):
        meta = pd.DataFrame({"image_id": [f"n{n}s{i}"]})
        EmbeddingSet({"cls": np.full((1, 2), i, np.float32), "all": np.full((1, 1), i, np.float32)}, meta,
                     {"n_images": 1, "shard": [i, n]}).save(sh.shard_path(out, (i, n)))  # fmt: skip
    return out


def test_one_shard_merges_alone_and_every_missing_shard_is_named(tmp_path):
    out = _npz_shards(tmp_path, 1)  # --shard 0/1: a merge of one file
    assert sh.merge_shards(out) == out
    emb = load_embeddings(out)
    assert sorted(emb.features) == ["all", "cls"] and emb.meta["image_id"].tolist() == ["n1s0"]
    out = _npz_shards(tmp_path, 3, name="three")
    sh.shard_path(out, (0, 3)).unlink()
    sh.shard_path(out, (2, 3)).unlink()
    with pytest.raises(FileNotFoundError) as e:
        sh.merge_shards(out, 3)
    assert str(e.value) == (f"cannot merge {out}: shard file(s) three.shard-0000-of-0003.npz, "
                            "three.shard-0002-of-0003.npz not written yet")  # fmt: skip


def test_the_last_shard_merges_its_own_set_beside_a_leftover_one(tmp_path):
    """A folder that still holds the 2 shard files of an earlier ``--shard I/2`` run: the last shard of
    a ``--shard I/3`` run merges its 3 files (it knows its N), not "no single set"."""
    out = _npz_shards(tmp_path, 2)
    _npz_shards(tmp_path, 3)
    assert sh.merge_if_complete(out, (2, 3)) == out
    assert load_embeddings(out).meta["image_id"].tolist() == ["n3s0", "n3s1", "n3s2"]
    assert sorted(p.name for p in tmp_path.glob("*.shard-*")) == [
        "emb.shard-0000-of-0002.npz",
        "emb.shard-0001-of-0002.npz",
    ]


def test_two_torchrun_processes_are_two_shards(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert sh.torchrun_shard("cpu") == ((1, 2), "cpu")
