"""Sharded embedding runs and the cp_measure route (chada.encode.shards, cp_measure) called directly:
the shard arithmetic, the merge and its refusals, and what cp_measure writes and refuses, with the
measurement itself replaced by a recorder (issue 26 item 10, mutation testing of ``chada.encode``)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile

from chada.encode import cp_measure as cpm
from chada.encode import shards as sh
from chada.encode.store import EmbeddingSet, load_embeddings
from chada.errors import InputError


# ------------------------------------------------------------------------------------------- shards
@pytest.mark.parametrize(("text", "shard"), [("0/4", (0, 4)), (" 3 / 4 ", (3, 4)), ("0/1", (0, 1))])
def test_parse_shard(text, shard):
    assert sh.parse_shard(text) == shard


@pytest.mark.parametrize("text", ["4/4", "0/0", "1", "-1/2", "a/b", "1/2/3"])
def test_parse_shard_refuses(text):
    with pytest.raises(ValueError) as e:
        sh.parse_shard(text)
    assert str(e.value) == f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}"


def test_shard_path_and_chunks():
    assert sh.shard_path("d/emb.parquet", (1, 4)).as_posix() == "d/emb.shard-0001-of-0004.parquet"
    chunks = [np.array([k]) for k in range(7)]
    blocks = [sh.shard_chunks(chunks, (i, 3)) for i in range(3)]
    assert [list(b) for b in blocks] == [[0, 1], [2, 3], [4, 5, 6]]  # i*k//n .. (i+1)*k//n
    assert blocks[2][6] is chunks[6]
    assert list(sh.shard_chunks(chunks, (6, 7))) == [6]
    with pytest.raises(ValueError) as e:
        sh.shard_chunks(chunks[:2], (0, 3))
    assert str(e.value) == ("3 shards for 2 chunk(s) of rows: every shard needs at least one chunk; use at most 2 "
                            "shards or a smaller --chunk-batches")  # fmt: skip


def test_torchrun_shard(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert sh.torchrun_shard("cuda") == (None, "cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert sh.torchrun_shard("cpu") == (None, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert sh.torchrun_shard("cuda") == ((2, 4), "cuda:1")
    assert sh.torchrun_shard("cuda:3") == ((2, 4), "cuda:3")
    assert sh.torchrun_shard("cpu") == ((2, 4), "cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert sh.torchrun_shard("cuda") == ((2, 4), "cuda:0")


def test_merge_info():
    infos = [{"model": "m", "n_images": 3, "seconds": 1.23456, "shard": [0, 2]}, {"n_images": None, "seconds": 2.0},
             {"n_images": 4}]  # fmt: skip
    assert sh._merge_info(infos, 9) == {"model": "m", "n_images": 7, "seconds": 2.0, "shards": 3, "n_rows": 9}
    assert infos[0]["shard"] == [0, 2]  # the shard's own info is not changed


def _write_shards(tmp_path, suffix, n=3):
    out = tmp_path / f"emb{suffix}"
    for i in range(n):
        meta = pd.DataFrame({"image_id": [f"s{i}a", f"s{i}b"], "channel_names": [["A"], ["A", "B"]]})
        EmbeddingSet({"cls": np.full((2, 2), i, np.float32)}, meta,
                     {"model": "m", "n_images": 2, "seconds": 1.0 + i, "shard": [i, n]}).save(sh.shard_path(out, (i, n)))  # fmt: skip
    return out


@pytest.mark.parametrize("suffix", [".npz", ".parquet", ".h5ad"])
def test_merge_shards_concatenates_in_order(tmp_path, suffix):
    out = _write_shards(tmp_path, suffix)
    assert sh.merge_shards(out) == out  # N found from the files
    emb = load_embeddings(out)
    assert emb.meta.image_id.tolist() == ["s0a", "s0b", "s1a", "s1b", "s2a", "s2b"]
    assert emb.get()[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert emb.meta["channel_names"].tolist()[:2] == [["A"], ["A", "B"]]
    assert {k: emb.info[k] for k in ("model", "n_images", "seconds", "shards", "n_rows")} == {
        "model": "m", "n_images": 6, "seconds": 3.0, "shards": 3, "n_rows": 6}  # fmt: skip
    assert "shard" not in emb.info
    assert not list(tmp_path.glob("*.shard-*"))


def test_merge_shards_keeps_them_when_asked_and_names_what_is_missing(tmp_path):
    out = _write_shards(tmp_path, ".npz")
    sh.merge_shards(out, 3, remove=False)
    assert len(list(tmp_path.glob("*.shard-*"))) == 3
    sh.shard_path(out, (1, 3)).unlink()
    with pytest.raises(FileNotFoundError) as e:
        sh.merge_shards(out, 3)
    assert str(e.value) == f"cannot merge {out}: shard file(s) emb.shard-0001-of-0003.npz not written yet"
    _write_shards(tmp_path, ".npz", n=2)  # two sets in one folder
    with pytest.raises(FileNotFoundError, match=r"^no single set of shard files for .*emb.npz \(found \["):
        sh.merge_shards(out)
    with pytest.raises(FileNotFoundError, match=r"found \[\]"):
        sh.merge_shards(tmp_path / "other.npz")


def test_merge_if_complete_merges_once(tmp_path):
    out = _write_shards(tmp_path, ".npz")
    sh.shard_path(out, (2, 3)).rename(tmp_path / "later")
    assert sh.merge_if_complete(out, (0, 3)) is None and not out.exists()
    (tmp_path / "later").rename(sh.shard_path(out, (2, 3)))
    lock = tmp_path / "emb.npz.merging"
    lock.write_text("")  # another shard is merging
    assert sh.merge_if_complete(out, (1, 3)) is None and not out.exists()
    lock.unlink()
    assert sh.finish_shard(out, (2, 3), "cpu", distributed=False) == out
    assert out.exists() and not lock.exists()


def test_finish_shard_under_torchrun_merges_on_rank_zero(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sh, "barrier", lambda device: calls.append(("barrier", device)))
    monkeypatch.setattr(sh, "finish_distributed", lambda: calls.append(("finish",)))
    monkeypatch.setattr(sh, "merge_shards", lambda out, n: calls.append(("merge", n)) or out)
    assert sh.finish_shard("o.npz", (1, 4), "cuda:1", distributed=True) is None
    assert calls == [("barrier", "cuda:1"), ("barrier", "cuda:1"), ("finish",)]
    calls.clear()
    assert sh.finish_shard("o.npz", (0, 4), "cpu", distributed=True) == "o.npz"
    assert calls == [("barrier", "cpu"), ("merge", 4), ("barrier", "cpu"), ("finish",)]


def test_barrier_and_finish_on_gloo(tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not dist.is_initialized()
    try:
        sh.barrier("cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        sh.barrier("cpu")  # the group is made once
    finally:
        sh.finish_distributed()
    assert not dist.is_initialized()
    sh.finish_distributed()  # nothing to end


# --------------------------------------------------------------------------------------- cp_measure
def test_read_labels_by_suffix_and_refusals(tmp_path):
    lab = np.array([[0, 1], [2, 300]], np.uint16)
    tifffile.imwrite(tmp_path / "l.TIF", lab)
    np.save(tmp_path / "l.npy", lab.astype(np.int32))
    from PIL import Image

    Image.fromarray(lab.astype(np.uint8)).save(tmp_path / "l.png")
    got = cpm.read_labels(tmp_path / "l.TIF")
    assert got.dtype == np.uint16 and got.tolist() == lab.tolist()
    assert cpm.read_labels(tmp_path / "l.npy").dtype == np.int32
    assert cpm.read_labels(tmp_path / "l.png").tolist() == [[0, 1], [2, 44]]
    with pytest.raises(InputError) as e:
        cpm.read_labels(tmp_path / "none.tif")
    assert str(e.value) == f"objects_file {tmp_path / 'none.tif'}: no such file"
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"^objects_file .*bad.png: unreadable label image \("):
        cpm.read_labels(tmp_path / "bad.png")
    (tmp_path / "bad.tif").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"bad.tif: unreadable label image"):
        cpm.read_labels(tmp_path / "bad.tif")


def _cp_manifest(tmp_path, n=3, objects=True):
    for k in range(n):
        tifffile.imwrite(tmp_path / f"i{k}.tif", np.full((4, 4), k, np.uint16))
        np.save(tmp_path / f"m{k}.npy", np.full((4, 4), k, np.int32))  # image 0 has no object
    df = pd.DataFrame({"image_id": [f"img{k}" for k in range(n)], "dataset": "d", "channel_names": "DNA",
                       "file": [f"i{k}.tif" for k in range(n)]})  # fmt: skip
    if objects:
        df["objects_file"] = [f"m{k}.npy" for k in range(n)]
    df.to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def _fake_measure(seen, cols=None):
    def measure(image, labels, names, object_name, intensity_max, name):
        seen.append((image.shape, names, object_name, intensity_max, name))
        ids = np.unique(labels[labels > 0])
        c = cols(name) if cols else ["Cells_Area", "Cells_Mean"]
        X = np.column_stack([ids * 10.0, ids + 0.5]) if len(ids) else np.zeros((0, 2))
        return ids, X[:, : len(c)], c

    return measure


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_cp_measure_writes_one_row_per_object(tmp_path, monkeypatch, capsys, suffix):
    import chada.features.cp_measure_kind as kind

    seen = []
    monkeypatch.setattr(kind, "cp_measure_objects", _fake_measure(seen))
    m = _cp_manifest(tmp_path)
    out = tmp_path / f"o{suffix}"
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        table, names = cpm.cp_measure_for_manifest(m, out, object_name="Nuclei", intensity_max=255.0)
    assert [str(x.message) for x in w] == ["1 image(s) with no object in their label image: no rows"]
    assert names == ["Cells_Area", "Cells_Mean"]
    assert seen[1] == ((1, 4, 4), ["DNA"], "Nuclei", 255.0, "image 'img1'")
    assert table.columns.tolist() == ["image_id", "dataset", "channel_names", "file", "objects_file", "object_id",
                                      "Cells_Area", "Cells_Mean"]  # fmt: skip
    assert table.image_id.tolist() == ["img1", "img2"] and table.object_id.tolist() == [1, 2]
    assert table.Cells_Area.tolist() == [10.0, 20.0]
    err = capsys.readouterr().out
    # an image without objects prints no progress line
    assert err.startswith("\r2/3 images, 1 objects\r3/3 images, 2 objects (") and err.endswith(" s)\n")
    if suffix == ".npz":
        emb = load_embeddings(out)
        assert emb.get().tolist() == [[10.0, 1.5], [20.0, 2.5]] and emb.get().dtype == np.float32
        assert emb.info == {"kind": "cp_measure", "feature_names": names}
        assert emb.meta.columns.tolist() == [
            "image_id",
            "dataset",
            "channel_names",
            "file",
            "objects_file",
            "object_id",
        ]
    else:
        import pyarrow.parquet as pq

        t = pq.read_table(out)
        spec = json.loads(t.schema.metadata[b"chada"])
        assert spec == {"feature_columns": names, "metadata_columns": ["image_id", "dataset", "channel_names", "file",
                                                                       "objects_file", "object_id"], "kind": "cp_measure"}  # fmt: skip
        assert b"pandas" in t.schema.metadata  # pandas' own metadata is kept
        assert t.column("Cells_Mean").to_pylist() == [1.5, 2.5]
    with pytest.warns(UserWarning, match="1 image"):
        cpm.cp_measure_for_manifest(m, out, progress=False)
    assert capsys.readouterr().out == "" and seen[-1][2:4] == ("Cells", 65535.0)


def test_cp_measure_refusals(tmp_path, monkeypatch):
    import chada.features.cp_measure_kind as kind

    m = _cp_manifest(tmp_path)
    with pytest.raises(InputError) as e:
        cpm.cp_measure_for_manifest(m, tmp_path / "o.csv")
    assert str(e.value) == f"--out {tmp_path / 'o.csv'}: cp_measure writes .parquet or .npz"
    no = _cp_manifest(tmp_path, objects=False)
    with pytest.raises(InputError) as e:
        cpm.cp_measure_for_manifest(no, tmp_path / "o.npz")
    assert str(e.value) == (f"{no}: no 'objects_file' column; cp_measure needs a label image per row (chada data scan "
                            "--objects-pattern writes it)")  # fmt: skip
    m = _cp_manifest(tmp_path, n=1)
    monkeypatch.setattr(kind, "cp_measure_objects", _fake_measure([]))
    with pytest.raises(InputError) as e:
        cpm.cp_measure_for_manifest(m, tmp_path / "o.npz", progress=False)
    assert str(e.value) == f"{m}: no object in any label image"
    m = _cp_manifest(tmp_path, n=3)
    monkeypatch.setattr(kind, "cp_measure_objects", _fake_measure([], cols=lambda who: [who]))
    with pytest.raises(InputError) as e:
        cpm.cp_measure_for_manifest(m, tmp_path / "o.npz", progress=False)
    assert str(e.value) == ("image 'img2': its channels give other feature columns than the first image's; run one "
                            "manifest per channel set")  # fmt: skip
