"""The feature file and its three formats (chada.encode.store, formats) called directly: names, refusals,
missing values, list columns and round trips, each checked against the values written in (issue 26
item 10, mutation testing of ``chada.encode``)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from chada.encode import formats as fm
from chada.encode.store import EmbeddingSet, EmbeddingSummary, load_embeddings, save_embeddings


def test_output_format_and_column_names(tmp_path):
    assert fm.output_format("a/B.NPZ") == ".npz" and fm.output_format("x.parquet") == ".parquet"
    assert fm.output_format(tmp_path / "x.h5ad") == ".h5ad"
    with pytest.raises(ValueError) as e:
        fm.output_format("x.csv")
    assert str(e.value) == "output must end in .npz, .parquet, .h5ad; got x.csv"
    assert (
        fm.feature_column("cls", 7) == "chada_cls_0007"
        and fm.feature_column("all", 12345) == "chada_all_12345"
    )
    assert fm._temp(tmp_path / "e.parquet") == tmp_path / f".e.parquet.tmp-{os.getpid()}"


def test_list_columns_and_missing_values():
    meta = pd.DataFrame({"names": [["A"], "B"], "text": ["a", "b"], "n": [1, 2], "none": [None, None]})
    assert fm._list_columns(meta) == ["names"]
    assert [fm._missing(v) for v in (None, pd.NA, float("nan"), np.float64("nan"), 0, "", "x", 0.0)] == [
        True, True, True, True, False, False, False, False]  # fmt: skip


def _meta(n=3):
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "label": list(range(n)),
                         "channel_names": [["A", "B"]] * n, "note": [None] * n})  # fmt: skip


def test_parquet_sink_writes_row_groups_and_its_info(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "e.parquet"
    schema = pa.schema([pa.field("note", pa.string())])
    sink = fm.ParquetSink(path, schema=schema, info={"model": "m"})
    assert sink.tmp == fm._temp(path) and sink.rows == 0
    sink.write(_meta(0), {"cls": np.zeros((0, 2))})  # an empty chunk: nothing, the writer not opened
    assert sink.writer is None
    m = _meta(3)
    sink.write(m.iloc[:2], {"cls": np.arange(4).reshape(2, 2), "all": np.ones((2, 1))})
    sink.write(m.iloc[2:].reset_index(drop=True), {"cls": [[9, 8]], "all": [[7]]})
    assert not path.exists() and sink.tmp.exists()
    assert sink.close() == path and not sink.tmp.exists() and sink.rows == 3
    f = pq.ParquetFile(path)
    assert f.num_row_groups == 2 and f.schema_arrow.field("note").type == pa.string()
    assert f.schema_arrow.field("chada_cls_0001").type == pa.float32()
    info = json.loads(f.schema_arrow.metadata[b"chada"])
    assert info == {"model": "m", "feature_dims": {"cls": 2, "all": 1},
                    "feature_columns": ["chada_cls_0000", "chada_cls_0001", "chada_all_0000"],
                    "pool_columns": {"cls": ["chada_cls_0000", "chada_cls_0001"], "all": ["chada_all_0000"]},
                    "metadata_columns": ["image_id", "label", "channel_names", "note"],
                    "list_columns": ["channel_names"]}  # fmt: skip
    feats, meta, info = fm.read_parquet(path)
    assert feats["cls"].tolist() == [[0, 1], [2, 3], [9, 8]] and feats["all"].dtype == np.float32
    assert meta["channel_names"].tolist() == [["A", "B"]] * 3 and meta["note"].isna().all()
    assert info == {"model": "m", "feature_dims": {"cls": 2, "all": 1}}


def test_parquet_sink_refusals_and_abort(tmp_path):
    sink = fm.ParquetSink(tmp_path / "e.parquet")
    with pytest.raises(ValueError) as e:
        sink.close()
    assert str(e.value) == f"{tmp_path / 'e.parquet'}: no row to write (no image or cell was kept)"
    clash = _meta(1).assign(chada_cls_0000=1.0)
    with pytest.raises(ValueError) as e:
        sink.write(clash, {"cls": np.ones((1, 1))})
    assert str(e.value) == "metadata columns ['chada_cls_0000'] clash with the feature columns; rename them"
    sink = fm.ParquetSink(tmp_path / "e.parquet")
    sink.abort()  # nothing opened: nothing to do
    sink.write(_meta(1), {"cls": np.ones((1, 1))})
    assert sink.tmp.exists()
    sink.abort()
    assert not sink.tmp.exists() and not (tmp_path / "e.parquet").exists()


def test_parquet_sink_removes_stale_temps_and_reads_zero_width_pools(tmp_path):
    stale = tmp_path / ".old.parquet.abcd1234.tmp"
    stale.write_bytes(b"x")
    os.utime(stale, (1e9, 1e9))
    sink = fm.ParquetSink(tmp_path / "e.parquet")
    assert not stale.exists()
    sink.write(_meta(2), {"cls": np.ones((2, 1)), "none": np.zeros((2, 0))})
    sink.close()
    feats, _, _ = fm.read_parquet(tmp_path / "e.parquet")
    assert feats["none"].shape == (2, 0) and feats["none"].dtype == np.float32


def test_read_parquet_refuses_a_foreign_file(tmp_path):
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(ValueError) as e:
        fm.read_parquet(tmp_path / "x.parquet")
    assert str(e.value) == f"{tmp_path / 'x.parquet'} has no 'chada' metadata: not a chada embeddings file"
    with pytest.raises(
        ValueError, match=r"x.parquet is not a chada embeddings file: .* has no 'chada' metadata"
    ):
        load_embeddings(tmp_path / "x.parquet")


def test_lists_back():
    meta = pd.DataFrame({"a": [np.array(["x", "y"]), ("z",), None], "b": [1, 2, 3]})
    out = fm._lists_back(meta, ["a", "missing"])
    assert out["a"].tolist() == [["x", "y"], ["z"], None] and out["b"].tolist() == [1, 2, 3]


def test_h5ad_round_trip_keeps_lists_slots_missing_and_pools(tmp_path):
    meta = pd.DataFrame({"image_id": ["a", "b"], "channel_names": [["A", "B"], ["C"]], "channel_slots": [[0, 2], [1]],
                         "note": [None, "n"], "label": [1.5, float("nan")], "code": pd.array(["x", None], dtype="string"),
                         "blank": [None, None]})  # fmt: skip
    feats = {"cls": np.array([[1, 2], [3, 4]], np.float64), "all": np.array([[5.0], [6.0]])}
    path = fm.write_h5ad(tmp_path / "e.h5ad", feats, meta, {"model": "m"})
    assert path == tmp_path / "e.h5ad" and not fm._temp(path).exists()
    import anndata as ad

    a = ad.read_h5ad(path)
    assert list(a.var_names) == ["chada_cls_0000", "chada_cls_0001"] and list(a.obsm) == ["all"]
    assert list(a.obs_names) == ["0", "1"] and a.obs["channel_names"].tolist() == ["A;B", "C"]
    info = json.loads(a.uns["chada"])
    assert info["pools"] == ["cls", "all"] and info["list_columns"] == ["channel_names", "channel_slots"]
    assert info["metadata_columns"] == list(meta.columns) and info["obs_dtypes"]["label"] == "float64"
    f, m, i = fm.read_h5ad(path)
    assert i == {"model": "m"}
    assert (
        f["cls"].tolist() == [[1, 2], [3, 4]]
        and f["all"].tolist() == [[5], [6]]
        and f["cls"].dtype == np.float32
    )
    assert m["channel_names"].tolist() == [["A", "B"], ["C"]] and m["channel_slots"].tolist() == [[0, 2], [1]]
    assert (
        m["note"].tolist() == [None, "n"]
        and m["code"].tolist() == ["x", None]
        and m["blank"].tolist() == [None, None]
    )
    assert m["image_id"].tolist() == ["a", "b"] and m["label"].iloc[0] == 1.5 and np.isnan(m["label"].iloc[1])


def test_read_h5ad_refuses_a_foreign_file(tmp_path):
    import anndata as ad

    ad.AnnData(X=np.ones((1, 1), np.float32)).write_h5ad(tmp_path / "x.h5ad")
    with pytest.raises(ValueError) as e:
        fm.read_h5ad(tmp_path / "x.h5ad")
    assert str(e.value) == f"{tmp_path / 'x.h5ad'} has no uns['chada']: not a chada embeddings file"


# --------------------------------------------------------------------------------------------- store
def test_embedding_set_checks_shapes_and_names_missing_kinds():
    with pytest.raises(ValueError) as e:
        EmbeddingSet({"cls": np.ones((2, 3))}, _meta(3))
    assert str(e.value) == "feature 'cls' has shape (2, 3); expected [3, D] to match the metadata rows"
    with pytest.raises(ValueError, match=r"feature 'all' has shape \(3,\)"):
        EmbeddingSet({"all": np.ones(3)}, _meta(3))
    emb = EmbeddingSet({"cls": np.arange(6.0).reshape(3, 2), "all": np.ones((3, 1))}, _meta(3), {"k": 1})
    assert len(emb) == 3 and emb.get().tolist() == [[0, 1], [2, 3], [4, 5]] and emb.get("all").shape == (3, 1)
    with pytest.raises(KeyError) as e:
        emb.get("patch")
    assert e.value.args[0] == "no feature 'patch' in this file; available: ['all', 'cls']"
    sub = emb.subset([2, 0])
    assert sub.get().tolist() == [[4, 5], [0, 1]] and sub.meta.image_id.tolist() == ["i2", "i0"]
    assert list(sub.meta.index) == [0, 1] and sub.info == {"k": 1} and sub.info is not emb.info
    assert len(EmbeddingSummary("p", 7, {"cls": 2})) == 7 and EmbeddingSummary("p", 7, {}).info == {}


def test_npz_round_trip_keeps_lists_infinities_and_missing(tmp_path):
    meta = pd.DataFrame({"image_id": ["a", "b", "c"], "channel_names": [np.array(["A", "B"]), ["C"], ["D"]],
                         "target": [1.5, float("inf"), float("-inf")], "y": [1.0, float("nan"), 2.0],
                         "z": [np.inf, np.nan, 0.5]})  # fmt: skip
    emb = EmbeddingSet({"cls": np.arange(6).reshape(3, 2)}, meta, {"model": "m", "path": tmp_path})
    out = tmp_path / "e.weird"
    assert emb.save(out) == out  # any other suffix is an .npz
    back = load_embeddings(out)
    assert back.get().dtype == np.float32 and back.get().tolist() == [[0, 1], [2, 3], [4, 5]]
    assert back.meta["channel_names"].tolist() == [["A", "B"], ["C"], ["D"]]
    t = back.meta["target"].astype(float).tolist()
    assert t[0] == 1.5 and t[1] == float("inf") and t[2] == float("-inf")
    assert back.meta["y"].iloc[0] == 1.0 and np.isnan(back.meta["y"].iloc[1])
    z = back.meta["z"].astype(float)
    assert z.iloc[0] == float("inf") and np.isnan(z.iloc[1]) and z.iloc[2] == 0.5
    assert back.info == {"model": "m", "path": str(tmp_path)}
    assert meta["channel_names"].iloc[0].tolist() == ["A", "B"]  # the caller's frame is not changed
    assert meta["target"].iloc[1] == float("inf")


@pytest.mark.parametrize("suffix", [".parquet", ".h5ad", ".PARQUET"])
def test_save_and_load_by_suffix(tmp_path, suffix):
    emb = EmbeddingSet({"cls": np.ones((2, 2))}, _meta(2).drop(columns="note"), {"model": "m"})
    path = save_embeddings(emb, tmp_path / f"e{suffix}")
    assert path == tmp_path / f"e{suffix}"
    back = load_embeddings(path)
    assert back.get().tolist() == [[1, 1], [1, 1]] and back.meta["channel_names"].tolist() == [["A", "B"]] * 2
    assert back.info["model"] == "m"
    with np.testing.assert_raises(Exception):
        np.load(path, allow_pickle=False)  # not an .npz


def test_load_refusals(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_embeddings(tmp_path / "no.npz")
    assert str(e.value) == f"embeddings file {tmp_path / 'no.npz'} not found"
    np.savez(tmp_path / "x.npz", a=np.ones(1))
    with pytest.raises(ValueError) as e:
        load_embeddings(tmp_path / "x.npz")
    assert str(e.value).startswith(f"{tmp_path / 'x.npz'} is not a chada embeddings file: ")
    (tmp_path / "y.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"y.h5ad is not a chada embeddings file: "):
        load_embeddings(tmp_path / "y.h5ad")


def test_parquet_sink_info_paths_shuffled_index_and_long_clash_list(tmp_path):
    """A Path in the info is written as its text; a chunk whose index is not 0..n-1 (a shuffled cut of
    the manifest) adds no index column; a clash names its first three columns only."""
    import pyarrow.parquet as pq

    path = tmp_path / "e.parquet"
    sink = fm.ParquetSink(path, info={"weights": tmp_path / "w.pt"})
    m = _meta(3).iloc[[2, 0, 1]]  # index 2, 0, 1
    sink.write(m, {"cls": np.array([[1.0], [2.0], [3.0]])})
    sink.close()
    names = pq.ParquetFile(path).schema_arrow.names
    assert names == ["image_id", "label", "channel_names", "note", "chada_cls_0000"]
    feats, meta, info = fm.read_parquet(path)
    assert info["weights"] == str(tmp_path / "w.pt")
    assert meta["image_id"].tolist() == ["i2", "i0", "i1"] and feats["cls"].ravel().tolist() == [1, 2, 3]
    clash = _meta(1).assign(**{f"chada_cls_000{j}": 1.0 for j in range(4)})
    with pytest.raises(ValueError) as e:
        fm.ParquetSink(tmp_path / "c.parquet").write(clash, {"cls": np.ones((1, 4))})
    assert str(e.value) == (
        "metadata columns ['chada_cls_0000', 'chada_cls_0001', 'chada_cls_0002'] clash with the feature "
        "columns; rename them"
    )


def test_h5ad_keeps_number_columns_as_numbers_and_paths_in_its_info(tmp_path):
    """Only text columns come back as Python objects: an int or float column keeps its dtype."""
    meta = pd.DataFrame({"image_id": ["a", "b"], "n": [1, 2], "x": [0.5, float("nan")]})
    path = fm.write_h5ad(tmp_path / "e.h5ad", {"cls": np.ones((2, 1))}, meta, {"weights": tmp_path / "w.pt"})
    _, m, info = fm.read_h5ad(path)
    assert info == {"weights": str(tmp_path / "w.pt")}
    assert m["n"].dtype == np.int64 and m["x"].dtype == np.float64 and m["image_id"].dtype == object
    assert m["n"].tolist() == [1, 2] and m["image_id"].tolist() == ["a", "b"]
