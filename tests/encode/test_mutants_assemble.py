"""The finished chunks -> the feature file (chada.encode.assemble.write_output) called directly, with
a real chunk store, a stand-in dataset (a manifest frame), a channel policy that numbers the channels
and an encoder whose ``finish`` hook records its calls: the row order, the info (sizes, rows, seconds),
where ``finish`` runs, cells, the Parquet schema and the clean-up on an error (issue 26 item 10, the
survivors of the first mutation run of ``encode/assemble.py``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from chada.data.objects import OBJECT_COLUMNS
from chada.encode import assemble
from chada.encode.chunks import ChunkStore
from chada.encode.store import EmbeddingSet, EmbeddingSummary, load_embeddings


class Policy:
    def resolve(self, names, image=None):
        return [10 + j for j in range(len(names))]


class Recorder:
    """``finish`` records (image ids, info keys, feature shapes), adds a meta column and an info key."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_at = fail_at

    def finish(self, ds, meta, info, features):
        # the hand-made kinds read ds[0] here when every chunk came from an earlier run
        assert isinstance(ds.frame, pd.DataFrame)
        self.calls.append((list(meta["image_id"]), sorted(info), {p: v.shape for p, v in features.items()}))
        if len(self.calls) == self.fail_at:
            raise RuntimeError("stop")
        meta["ten_n"] = meta["n"] * 10
        info["finished"] = info.get("finished", 0) + 1


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A manifest of 4 images (``well`` missing in the first two), a store with two chunks of 2 rows,
    and a clock that reads 105.1234567 (``t0`` = 100)."""
    monkeypatch.setattr(assemble, "time", SimpleNamespace(time=lambda: 105.1234567))
    frame = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "n": [1, 2, 3, 4],
                          "well": pd.array([None, None, "W3", "W4"], dtype="string")})  # fmt: skip
    store = ChunkStore(tmp_path / "store", {"m": 1})
    store.save(0, np.array([0, 1]), {"cls": [[0.0, 0.5], [1.0, 1.5]], "all": [[0.0] * 3, [1.0] * 3]},
               [["A"], ["A", "B"]], ["sa", "sb"])  # fmt: skip
    store.save(1, np.array([2, 3]), {"cls": [[2.0, 2.5], [3.0, 3.5]], "all": [[2.0] * 3, [3.0] * 3]},
               [["A"], ["B"]], ["sc", "sd"])  # fmt: skip
    return SimpleNamespace(frame=frame), store


def _write(target, ds, store, chunks, encoder, cells=False, pools=("cls", "all")):
    info = {"model": "m"}
    out = assemble.write_output(target, store, chunks, ds, Policy(), list(pools), encoder, info, 100.0, cells)
    return out, info


def test_npz_rows_follow_the_chunks_order_and_info_has_sizes_rows_seconds(tmp_path, run):
    ds, store = run
    enc = Recorder()
    emb, info = _write(tmp_path / "o.npz", ds, store, {1: np.array([2, 3]), 0: np.array([0, 1])}, enc)
    assert isinstance(emb, EmbeddingSet)
    assert info == {"model": "m", "feature_dims": {"cls": 2, "all": 3}, "n_rows": 4, "finished": 1,
                    "seconds": 5.123}  # fmt: skip
    assert enc.calls == [
        (["c", "d", "a", "b"], ["feature_dims", "model", "n_rows"], {"cls": (4, 2), "all": (4, 3)})
    ]
    back = load_embeddings(tmp_path / "o.npz")
    assert back.meta["image_id"].tolist() == ["c", "d", "a", "b"]
    assert back.features["cls"][:, 0].tolist() == [2, 3, 0, 1]
    assert back.meta["channel_names"].tolist() == [["A"], ["B"], ["A"], ["A", "B"]]
    assert back.meta["channel_slots"].tolist() == [[10], [10], [10], [10, 11]]
    assert back.meta["ten_n"].tolist() == [30, 40, 10, 20]
    assert back.info["seconds"] == 5.123 and back.info["finished"] == 1


def test_no_chunk_gives_an_empty_table_and_no_finish(tmp_path, run):
    ds, store = run
    enc = Recorder()
    emb, info = _write(tmp_path / "o.npz", ds, store, {}, enc)
    assert len(emb.meta) == 0 and info["n_rows"] == 0 and enc.calls == []
    assert {p: v.shape for p, v in emb.features.items()} == {"cls": (0, 0), "all": (0, 0)}


def _cells(store):
    """Chunk 0: image a has cells 1 and 2, image b cell 7; chunk 1 (image c): no cell; chunk 2: cell 5 of d."""
    objects = {c: np.array([1.0, 2.0, 3.0]) for c in OBJECT_COLUMNS}
    objects.update(field=np.array([0, 0, 1]), object_id=np.array([1, 2, 7]))
    store.save(0, np.array([0, 1]), {"cls": np.arange(6.0).reshape(3, 2)}, [["A"], ["A", "B"]], ["sa", "sb"],
               objects=objects)  # fmt: skip
    empty = {c: np.zeros(0) for c in OBJECT_COLUMNS} | {"field": np.zeros(0, np.int64)}
    store.save(1, np.array([2]), {"cls": np.zeros((0, 0))}, [["A"]], ["sc"], objects=empty)
    one = {c: np.array([4.0]) for c in OBJECT_COLUMNS} | {"field": np.array([3]), "object_id": np.array([5])}
    store.save(2, np.array([3]), {"cls": [[9.0, 9.0]]}, [["B"]], ["sd"], objects=one)
    return {0: np.array([0, 1]), 1: np.array([2]), 2: np.array([3])}


def test_cells_give_one_row_per_cell_numbered_from_zero(tmp_path, run):
    ds, store = run
    chunks = _cells(store)
    enc = Recorder()
    emb, info = _write(tmp_path / "o.npz", ds, store, chunks, enc, cells=True, pools=["cls"])
    assert emb.meta.index.tolist() == [0, 1, 2, 3]
    assert emb.meta["cell_id"].tolist() == ["a_1", "a_2", "b_7", "d_5"] and info["n_rows"] == 4
    assert emb.meta["centroid_x"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert emb.features["cls"].tolist() == [[0, 1], [2, 3], [4, 5], [9, 9]]
    assert enc.calls[0][0] == ["a", "a", "b", "d"]


def test_parquet_streams_chunks_with_the_manifests_types_and_finish_per_chunk(tmp_path, run):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds, store = run
    enc = Recorder()
    target = tmp_path / "o.parquet"
    got, info = _write(target, ds, store, {0: np.array([0, 1]), 1: np.array([2, 3])}, enc)
    assert isinstance(got, EmbeddingSummary)
    assert (got.path, got.n_rows, got.feature_dims) == (target, 4, {"cls": 2, "all": 3})
    assert got.info == {"model": "m", "n_rows": 4, "seconds": 5.123, "feature_dims": {"cls": 2, "all": 3}}
    assert info == {"model": "m", "n_rows": 4, "seconds": 5.123}  # the sink works on its own copy
    # finish runs per chunk on the sink's info (rows and seconds already known), before the schema is written
    assert [c[:2] for c in enc.calls] == [(["a", "b"], ["model", "n_rows", "seconds"]),
                                          (["c", "d"], ["finished", "model", "n_rows", "seconds"])]  # fmt: skip
    f = pq.ParquetFile(target)
    assert f.num_row_groups == 2
    # "well" has no value in the first chunk: its type comes from the whole manifest
    assert f.schema_arrow.field("well").type == pa.string()
    meta = json.loads(f.schema_arrow.metadata[b"chada"])
    assert (meta["n_rows"], meta["seconds"], meta["finished"]) == (4, 5.123, 1)
    back = load_embeddings(target)
    assert back.meta["well"].tolist() == [None, None, "W3", "W4"]
    assert back.meta["ten_n"].tolist() == [10, 20, 30, 40]


def test_parquet_of_cells_has_one_row_per_cell(tmp_path, run):
    ds, store = run
    target = tmp_path / "o.parquet"
    enc = Recorder()
    got, _ = _write(target, ds, store, _cells(store), enc, cells=True, pools=["cls"])
    assert got.n_rows == 4 and load_embeddings(target).meta["cell_id"].tolist() == [
        "a_1",
        "a_2",
        "b_7",
        "d_5",
    ]
    assert [c[0] for c in enc.calls] == [["a", "a", "b"], ["d"]]  # not called on the chunk without a cell


def test_an_error_after_the_first_row_group_leaves_no_file(tmp_path, run):
    ds, store = run
    target = tmp_path / "o.parquet"
    with pytest.raises(RuntimeError, match="stop"):
        _write(target, ds, store, {0: np.array([0, 1]), 1: np.array([2, 3])}, Recorder(fail_at=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.parts"]  # no file, no temp file
