"""``chada.profiles.io.read_feature_table`` on the three single-cell formats and CSV."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from chada.errors import InputError
from chada.profiles.io import read_feature_table, split_columns


def _table() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 3)).astype(np.float32)
    meta = pd.DataFrame({"plate": ["P1"] * 5, "well": list("ABCDE"), "dose": [0.0, 1, 1, 2, 2], "object_id": range(5),
                         "Metadata_Site": [1] * 5, "qc_score": np.arange(5.0)})  # fmt: skip
    return meta, X


def test_parquet_schema_metadata_decides(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta, X = _table()
    names = [f"chada_cls_{i:04d}" for i in range(3)]
    df = pd.concat([meta, pd.DataFrame(X, columns=names)], axis=1)
    table = pa.Table.from_pandas(df, preserve_index=False)
    spec = {
        "feature_columns": names,
        "metadata_columns": list(meta.columns),
    }  # qc_score: numeric, yet metadata
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"chada": json.dumps(spec).encode()}
    )
    pq.write_table(table, tmp_path / "cells.parquet")
    m, Y, f = read_feature_table(tmp_path / "cells.parquet")
    assert f == names and list(m.columns) == list(meta.columns)
    np.testing.assert_array_equal(Y, X.astype(np.float64))


def test_the_rule_without_schema_metadata(tmp_path):
    meta, X = _table()
    df = pd.concat([meta, pd.DataFrame(X, columns=["f0", "f1", "f2"])], axis=1)
    assert split_columns(df)[1] == ["qc_score", "f0", "f1", "f2"]  # dose, object_id, Metadata_*: metadata
    df.to_parquet(tmp_path / "t.parquet")
    df.to_csv(tmp_path / "t.csv", index=False)
    for name in ("t.parquet", "t.csv"):
        m, Y, f = read_feature_table(tmp_path / name)
        assert f == ["qc_score", "f0", "f1", "f2"] and "dose" in m.columns
        np.testing.assert_allclose(Y[:, 1:], X, rtol=1e-6)


def test_h5ad_and_npz(tmp_path):
    import anndata

    from chada.encode.store import EmbeddingSet

    meta, X = _table()
    ad = anndata.AnnData(X=X, obs=meta.astype({"object_id": str}).set_index("object_id", drop=False))
    ad.var_names = ["a", "b", "c"]
    ad.write_h5ad(tmp_path / "c.h5ad")
    m, Y, f = read_feature_table(tmp_path / "c.h5ad")
    assert f == ["a", "b", "c"] and list(m.well) == list("ABCDE")
    np.testing.assert_array_equal(Y, X)
    EmbeddingSet({"cls": X}, meta).save(tmp_path / "e.npz")
    m, Y, f = read_feature_table(tmp_path / "e.npz")
    assert f == ["cls_0000", "cls_0001", "cls_0002"] and list(m.plate) == ["P1"] * 5
    np.testing.assert_array_equal(Y, X)
    with pytest.raises(InputError, match="no feature 'patch'"):
        read_feature_table(tmp_path / "e.npz", pool="patch")


def test_chada_embed_files_read_one_pool_through_load_embeddings(tmp_path):
    """.parquet / .h5ad / .npz written by chada embed: the chosen pool only, equal in the three formats."""
    from chada.encode.store import EmbeddingSet, load_embeddings, save_embeddings

    meta, X = _table()
    emb = EmbeddingSet({"cls": X, "all": np.hstack([X, 2 * X])}, meta)
    for suffix in (".parquet", ".h5ad", ".npz"):
        path = save_embeddings(emb, tmp_path / f"cells{suffix}")
        for pool in ("cls", "all"):
            m, Y, f = read_feature_table(path, pool=pool)
            np.testing.assert_array_equal(Y, load_embeddings(path).get(pool).astype(np.float64))
            assert (
                Y.shape == (5, 3 if pool == "cls" else 6) and len(f) == Y.shape[1] and len(set(f)) == len(f)
            )
            assert list(m.well) == list("ABCDE") and "qc_score" in m.columns
        with pytest.raises(InputError, match="patch"):
            read_feature_table(path, pool="patch")


def test_bad_tables(tmp_path):
    with pytest.raises(InputError, match="no such feature table"):
        read_feature_table(tmp_path / "none.parquet")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(InputError, match="unknown feature table format"):
        read_feature_table(tmp_path / "x.txt")
    pd.DataFrame({"plate": ["a"], "well": ["b"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(InputError, match="no feature column"):
        read_feature_table(tmp_path / "m.csv")
