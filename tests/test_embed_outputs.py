"""`chada embed` outputs: .npz / .parquet / .h5ad by suffix, streamed Parquet, shards, merge, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile

import chada.encode.embed as embed_mod
from chada.cli import main
from chada.data.objects import ObjectOptions
from chada.encode.embed import embed_manifest
from chada.encode.options import ImageOptions, OutputOptions, RunOptions
from chada.encode.shards import shard_path
from chada.encode.store import load_embeddings

SRC = Path(__file__).resolve().parents[1] / "src"


def tiny_plate(folder: Path, n_fields: int = 8) -> Path:
    """``n_fields`` 2-channel 48 x 48 fields, each with 4 square objects in a label image."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_fields):
        img = rng.integers(0, 4000, (2, 48, 48), dtype=np.uint16)
        labels = np.zeros((48, 48), np.uint16)
        for k, (y, x) in enumerate([(8, 8), (8, 30), (30, 8), (30, 30)]):
            dy, dx = rng.integers(-3, 4, 2)
            labels[y + dy : y + dy + 6 + k, x + dx : x + dx + 6] = k + 1
        tifffile.imwrite(folder / f"f{i}.tif", img, photometric="minisblack")
        tifffile.imwrite(folder / f"f{i}_labels.tif", labels)
        rows.append({"image_id": f"f{i}", "dataset": "plate", "file": f"f{i}.tif", "channel_names": "DAPI;Actin",
                     "objects_file": f"f{i}_labels.tif", "well": f"B{i:02d}", "dose": 0.1 * i,
                     "compound": None if i % 3 == 0 else f"cpd{i % 2}"})  # fmt: skip
    path = folder / "plate.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


CELLS = ObjectOptions(crop_size=16)


def embed(man, out, model="chada_vit_test", batch_size=2, num_workers=0, shard=None):
    run = RunOptions(batch_size=batch_size, num_workers=num_workers, progress=False, seed=3)
    return embed_manifest(model, man, out, image=ImageOptions(size=16), run=run,
                          output=OutputOptions(chunk_batches=2, shard=shard), objects=CELLS)  # fmt: skip


def assert_same(a, b):
    assert sorted(a.features) == sorted(b.features)
    for k in a.features:
        np.testing.assert_array_equal(a.features[k], b.features[k])  # bit for bit
    pd.testing.assert_frame_equal(a.meta, b.meta)


def test_three_formats_hold_the_same_table(tmp_path):
    man = tiny_plate(tmp_path)
    sets = {}
    for suffix in (".npz", ".parquet", ".h5ad"):
        embed(man, tmp_path / f"cells{suffix}")
        sets[suffix] = load_embeddings(tmp_path / f"cells{suffix}")
        assert not (tmp_path / f"cells{suffix}.parts").exists()
    assert len(sets[".npz"]) == 32 and sets[".npz"].meta["object_id"].tolist() == [1, 2, 3, 4] * 8
    assert_same(sets[".npz"], sets[".parquet"])
    assert_same(sets[".npz"], sets[".h5ad"])
    assert sets[".parquet"].meta["compound"].iloc[0] is None
    assert sets[".parquet"].meta["channel_names"].iloc[0] == ["DAPI", "Actin"]
    assert sets[".parquet"].info["objects"]["crop_size"] == 16


def test_parquet_is_streamed_and_self_describing(tmp_path):
    man = tiny_plate(tmp_path)
    out = tmp_path / "cells.parquet"
    embed(man, out)
    f = pq.ParquetFile(out)
    assert f.num_row_groups == 4  # one row group per chunk of 2 fields: written chunk by chunk
    assert [f.metadata.row_group(g).num_rows for g in range(4)] == [8] * 4
    info = json.loads(pq.read_schema(out).metadata[b"chada"])
    assert info["pool_columns"]["cls"][:2] == ["chada_cls_0000", "chada_cls_0001"]
    assert info["feature_columns"] == info["pool_columns"]["cls"] + info["pool_columns"]["all"]
    assert len(info["feature_columns"]) == 32 + 64
    assert "well" in info["metadata_columns"] and "chada_cls_0000" not in info["metadata_columns"]
    df = pd.read_parquet(out)
    assert df["chada_cls_0000"].dtype == np.float32
    assert df["dose"].tolist()[::4] == pytest.approx([0.1 * i for i in range(8)])


def test_h5ad_is_anndata(tmp_path):
    import anndata

    man = tiny_plate(tmp_path)
    embed(man, tmp_path / "cells.h5ad")
    adata = anndata.read_h5ad(tmp_path / "cells.h5ad")
    assert adata.shape == (32, 32) and adata.obsm["all"].shape == (32, 64)
    assert adata.obs["well"].iloc[5] == "B01" and adata.obs["object_id"].iloc[5] == 2
    assert json.loads(adata.uns["chada"])["model"] == "chada_vit_test"


def test_whole_images_parquet_feeds_the_readers(tmp_path):
    """Without --objects: one row per image; the file is what `chada project`'s reader loads."""
    man = tiny_plate(tmp_path)
    assert main(["embed", "--model", "handmade", "--manifest", str(man), "--out", str(tmp_path / "h.parquet"),
                 "--quiet"]) == 0  # fmt: skip
    assert main(["embed", "--model", "handmade", "--manifest", str(man), "--out", str(tmp_path / "h.npz"),
                 "--quiet"]) == 0  # fmt: skip
    assert_same(load_embeddings(tmp_path / "h.npz"), load_embeddings(tmp_path / "h.parquet"))
    rc = main(["project", "--embeddings", str(tmp_path / "h.parquet"), "--out", str(tmp_path / "proj.png"),
               "--color-by", "compound", "--method", "pca"])  # fmt: skip
    assert rc == 0 and (tmp_path / "proj.png").exists()


def test_shards_and_merge_equal_one_process(tmp_path, capsys):
    man = tiny_plate(tmp_path)
    one = tmp_path / "one.parquet"
    embed(man, one, batch_size=3)  # 3 cells per pass: batches straddle fields
    out = tmp_path / "sharded.parquet"
    for i in range(3):  # 4 chunks over 3 shards: uneven blocks
        embed(man, out, shard=(i, 3), batch_size=3)
        assert shard_path(out, (i, 3)).exists() and not out.exists()
    assert main(["embed", "--merge", str(out)]) == 0
    assert not shard_path(out, (0, 3)).exists()
    assert_same(load_embeddings(one), load_embeddings(out))
    assert load_embeddings(out).info["n_rows"] == 32 and load_embeddings(out).info["n_images"] == 8
    embed(man, one)
    # the CLI: the last shard to finish merges
    base = ["embed", "--model", "chada_vit_test", "--manifest", str(man), "--objects", "--crop-size", "16",
            "--image-size", "16", "--batch-size", "2", "--chunk-batches", "2", "--seed", "3", "--quiet",
            "--precision", "fp32"]  # fmt: skip
    for suffix in (".npz", ".h5ad"):
        out = tmp_path / f"cli{suffix}"
        assert main([*base, "--out", str(out), "--shard", "1/2"]) == 0
        assert not out.exists()
        assert main([*base, "--out", str(out), "--shard", "0/2"]) == 0
        assert "merged the 2 shard files" in capsys.readouterr().out
        assert_same(load_embeddings(one), load_embeddings(out))


def test_shards_run_side_by_side_but_one_shard_has_one_writer(tmp_path, capsys):
    """Job-array shards write one OUT at the same time: each locks its own shard file, not OUT."""
    from contextlib import ExitStack

    from chada.cli.embed import lock_paths
    from chada.locks import output_lock

    man = tiny_plate(tmp_path, n_fields=4)
    out = tmp_path / "cells.parquet"
    base = ["embed", "--model", "chada_vit_test", "--manifest", str(man), "--objects", "--crop-size", "16",
            "--image-size", "16", "--batch-size", "2", "--chunk-batches", "1", "--quiet", "--out", str(out)]  # fmt: skip
    assert lock_paths(str(out), None, False) == [out]
    assert lock_paths(str(out), (0, 2), True) == [out, shard_path(out, (0, 2))]  # rank 0 writes OUT at the end
    with ExitStack() as held:  # shard 0 is running: it holds what a shard-0 run takes
        for path in lock_paths(str(out), (0, 2), False):
            held.enter_context(output_lock(path, "chada embed --shard 0/2"))
        assert main([*base, "--shard", "1/2"]) == 0  # its sibling is not refused
        capsys.readouterr()
        assert main([*base, "--shard", "0/2"]) == 2  # a second copy of shard 0 is
        assert "is being written by pid" in capsys.readouterr().err


def test_a_killed_shard_resumes_its_own_part(tmp_path, monkeypatch):
    man = tiny_plate(tmp_path)
    out = tmp_path / "cells.parquet"
    real, calls = embed_mod._embed_samples, {"n": 0}

    def dies_after_one_chunk(*a, **k):  # a chunk = 2 fields = 8 cells = 4 passes of 2 cells
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(embed_mod, "_embed_samples", dies_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        embed(man, out, shard=(1, 2))
    assert len(list(Path(str(shard_path(out, (1, 2))) + ".parts").glob("chunk_*.npz"))) == 1

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    calls["n"] = 0
    monkeypatch.setattr(embed_mod, "_embed_samples", counting)
    embed(man, out, shard=(1, 2))
    assert calls["n"] == 4  # only the second chunk of shard 1 is encoded
    embed(man, out, shard=(0, 2))
    from chada.encode.shards import merge_shards

    merge_shards(out)
    embed(man, tmp_path / "one.parquet")
    assert_same(load_embeddings(tmp_path / "one.parquet"), load_embeddings(out))


def test_bad_shard_spec(tmp_path, capsys):
    man = tiny_plate(tmp_path, 2)
    rc = main(["embed", "--model", "handmade", "--manifest", str(man), "--out", str(tmp_path / "x.npz"), "--shard", "2/2"])
    assert rc == 2 and "0 <= I < N" in capsys.readouterr().err
    assert main(["embed", "--merge", str(tmp_path / "x.npz")]) == 2
    rc = main(["embed", "--model", "handmade", "--manifest", str(man), "--out", str(tmp_path / "x.npz"), "--shard", "2/3"])
    assert rc == 2 and "3 shards for 1 chunk(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 chada embed` (gloo on CPU) writes the one-process file exactly."""
    man = tiny_plate(tmp_path)
    args = ["embed", "--model", "chada_vit_test", "--manifest", str(man), "--objects", "--crop-size", "16",
            "--image-size", "16", "--batch-size", "2", "--chunk-batches", "2", "--seed", "3", "--quiet",
            "--precision", "fp32"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "one.parquet")]) == 0
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "chada.cli",
           *args, "--out", str(tmp_path / "two.parquet")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "merged the 2 shard files" in proc.stdout
    two = load_embeddings(tmp_path / "two.parquet")
    assert_same(load_embeddings(tmp_path / "one.parquet"), two)
    assert two.info["shards"] == 2 and two.info["n_rows"] == 32 and two.info["n_images"] == 8
    assert not list(tmp_path.glob("two.shard-*"))


@pytest.mark.parametrize("model", ["handmade", "one_channel_vit_test", "inter_channel_vit_test"])
def test_every_encoder_embeds_cells(tmp_path, model):
    """Hand-made features and the baselines go through the same cell route as ChAda-ViT."""
    man = tiny_plate(tmp_path, 3)
    emb = embed(man, tmp_path / "c.npz", model=model)
    assert len(emb) == 12 and emb.meta["object_id"].tolist() == [1, 2, 3, 4] * 3
    x = emb.features["cls"]
    assert np.isfinite(x).all() and len(np.unique(x.round(5), axis=0)) == 12  # every cell its own vector
    if model == "handmade":
        assert emb.info["feature_names"] and x.shape[1] == len(emb.info["feature_names"])


def test_evaluate_reads_parquet_and_h5ad(tmp_path):
    """`chada evaluate` takes the new formats through load_embeddings, unchanged."""
    man = tiny_plate(tmp_path, 12)
    df = pd.read_csv(man)
    df["label"], df["split"] = ["a", "b"] * 6, ["train", "train", "test"] * 4
    df.to_csv(man, index=False)
    for suffix in (".parquet", ".h5ad"):
        assert main(["embed", "--model", "handmade", "--manifest", str(man), "--out", str(tmp_path / f"h{suffix[1:]}{suffix}"),
                     "--quiet"]) == 0  # fmt: skip
    rc = main(["evaluate", "--embeddings", str(tmp_path / "hparquet.parquet"), str(tmp_path / "hh5ad.h5ad"),
               "--label-column", "label", "--out", str(tmp_path / "eval"), "--no-plots", "--quiet", "--seeds", "1"])  # fmt: skip
    assert rc == 0
    rows = pd.read_csv(tmp_path / "eval" / "results_long.csv")
    assert set(rows["model"]) == {"hparquet", "hh5ad"}
    a, b = (rows[rows["model"] == m].drop(columns="model").reset_index(drop=True) for m in ("hparquet", "hh5ad"))
    pd.testing.assert_frame_equal(a, b)  # the same features give the same scores


def test_pycytominer_reads_the_parquet_as_is(tmp_path):
    from pycytominer import aggregate
    from pycytominer.cyto_utils import load_profiles

    man = tiny_plate(tmp_path)
    out = tmp_path / "cells.parquet"
    embed(man, out)
    profiles = load_profiles(str(out))
    cols = json.loads(pq.read_schema(out).metadata[b"chada"])["pool_columns"]["cls"]
    per_well = aggregate(profiles, strata=["well"], features=cols, operation="median").set_index("well")
    emb = load_embeddings(out)
    for well in ("B00", "B05"):
        expected = np.median(emb.features["cls"][(emb.meta["well"] == well).to_numpy()], axis=0)
        np.testing.assert_allclose(per_well.loc[well, cols].to_numpy(float), expected, rtol=1e-6)


def test_workers_cut_the_same_cells(tmp_path):
    """Crops cut in two DataLoader worker processes give the table of the main process."""
    man = tiny_plate(tmp_path, 4)
    embed(man, tmp_path / "w0.npz")
    embed(man, tmp_path / "w2.npz", num_workers=2)
    assert_same(load_embeddings(tmp_path / "w0.npz"), load_embeddings(tmp_path / "w2.npz"))
