"""`chada embed` / embed_manifest: features, metadata, pools, channel-count fallback, resume keys, image size, NaN options."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

import chada.encode.embed as embed_mod
from chada.cli import main
from chada.data.dataset import ManifestDataset
from chada.encode.embed import embed_manifest
from chada.encode.encoders import embed_images
from chada.encode.options import ImageOptions, OutputOptions, RunOptions, Selection
from chada.encode.store import load_embeddings
from chada.models import create_model


def _write_manifest(folder, specs, name="manifest.csv"):
    """specs: list of (dataset, n_channels, size, n_images). One multi-channel TIFF per image."""
    rng = np.random.default_rng(0)
    rows = []
    for ds, c, size, n in specs:
        for i in range(n):
            iid = f"{ds}_{i:03d}"
            tifffile.imwrite(folder / f"{iid}.tif", rng.integers(0, 4000, (c, size, size), dtype=np.uint16), photometric="minisblack")
            rows.append(
                {
                    "image_id": iid,
                    "dataset": ds,
                    "file": f"{iid}.tif",
                    "channel_names": ";".join(f"{ds}_ch{j}" for j in range(c)),
                    "split": "train" if i % 3 else "test",
                    "label": f"class{i % 2}",
                    "plate": f"P{i % 2}",
                }
            )
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture()
def mixed(tmp_path):
    return _write_manifest(tmp_path, [("A", 3, 32, 5), ("B", 1, 32, 3), ("C", 5, 32, 4)])


def test_cli_embed_chada(mixed, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    rc = main(
        ["embed", "--model", "chada_vit_test", "--manifest", str(mixed), "--out", str(out),
         "--batch-size", "4", "--seed", "7", "--precision", "fp32", "--quiet"]
    )  # fp32: compared with the model run directly below
    assert rc == 0
    assert "12 images" in capsys.readouterr().out
    emb = load_embeddings(out)
    assert emb.features["cls"].shape == (12, 32)
    assert emb.features["all"].shape == (12, 64)
    assert emb.meta["image_id"].tolist() == pd.read_csv(mixed)["image_id"].tolist()
    assert emb.meta["channel_names"].iloc[0] == ["A_ch0", "A_ch1", "A_ch2"]
    assert emb.meta["n_channels"].tolist() == [3] * 5 + [1] * 3 + [5] * 4
    assert emb.meta["plate"].iloc[1] == "P1"
    assert emb.info["seed"] == 7 and emb.info["source"] == "random_init" and emb.info["untrained"] is True
    assert emb.info["pools"] == ["cls", "all"] and emb.info["pool_fallback"] is None
    assert not (tmp_path / "emb.npz.parts").exists()

    # same features as running the model directly on the normalised images
    torch.manual_seed(7)
    model = create_model("chada_vit_test").eval()
    ds = ManifestDataset(mixed)
    direct = embed_images(model, [ds[i]["image"] for i in range(len(ds))], pools=("cls", "all"))
    np.testing.assert_allclose(emb.features["cls"], direct["cls"], atol=1e-5)
    np.testing.assert_allclose(emb.features["all"], direct["all"], atol=1e-5)
    # "all" = CLS then the mean of the real patch tokens
    np.testing.assert_array_equal(emb.features["all"][:, :32], emb.features["cls"])


def test_saved_model_folder_and_seed_reproducible(mixed, tmp_path):
    torch.manual_seed(3)
    model = create_model("inter_channel_vit_test")
    model.save_pretrained(tmp_path / "m")
    a = embed_manifest(tmp_path / 'm', mixed, tmp_path / 'a.npz', run=RunOptions(batch_size=5, progress=False))
    b = embed_manifest(model, mixed, tmp_path / 'b.npz', run=RunOptions(batch_size=3, progress=False))
    np.testing.assert_allclose(a.features["cls"], b.features["cls"], atol=1e-5)
    assert a.info["source"] == "pretrained" and a.info["seed"] is None and a.info["arch"] == "inter_channel_vit"
    r1 = embed_manifest('one_channel_vit_test', mixed, tmp_path / 'r1.npz', run=RunOptions(seed=1, progress=False))
    r2 = embed_manifest('one_channel_vit_test', mixed, tmp_path / 'r2.npz', run=RunOptions(seed=1, progress=False))
    r3 = embed_manifest('one_channel_vit_test', mixed, tmp_path / 'r3.npz', run=RunOptions(seed=2, progress=False))
    np.testing.assert_array_equal(r1.features["cls"], r2.features["cls"])
    assert not np.allclose(r1.features["cls"], r3.features["cls"])


def test_one_channel_concat_per_dataset_and_fallback(mixed, tmp_path, caplog):
    # one dataset = one channel count: the paper's concatenation, C * D
    one = embed_manifest('one_channel_vit_test', mixed, tmp_path / 'c.npz', run=RunOptions(progress=False), select=Selection(datasets=['C']))
    assert one.features["cls"].shape == (4, 5 * 32)
    assert one.features["all"].shape == (4, 5 * 64)
    assert one.info["pool_fallback"] is None
    # mixed channel counts: mean over channels, logged and recorded
    with caplog.at_level("WARNING"):
        emb = embed_manifest('one_channel_vit_test', mixed, tmp_path / 'm.npz', run=RunOptions(progress=False))
    assert emb.features["cls"].shape == (12, 32) and emb.features["all"].shape == (12, 64)
    assert emb.info["pool_fallback"] == {"cls": "mean", "all": "mean_all"}
    assert "mean over channels" in caplog.text
    # the fallback equals the mean of the concatenated blocks
    blocks = one.features["cls"].reshape(4, 5, 32).mean(1)
    np.testing.assert_allclose(emb.features["cls"][-4:], blocks, atol=1e-5)


def test_native_sizes_grouped_and_image_size(tmp_path):
    man = _write_manifest(tmp_path, [("A", 3, 32, 3), ("B", 3, 48, 3)])
    emb = embed_manifest('chada_vit_test', man, tmp_path / 'n.npz', run=RunOptions(batch_size=6, progress=False))
    assert emb.features["cls"].shape == (6, 32)
    model = create_model("fixed_channel_vit_test")
    emb = embed_manifest(model, man, tmp_path / 'f.npz', image=ImageOptions(size=32), run=RunOptions(progress=False))
    assert emb.features["all"].shape == (6, 64) and emb.info["image_size"] == 32


def test_resume_after_interruption(mixed, tmp_path, monkeypatch):
    out = tmp_path / "r.npz"
    full = embed_manifest('chada_vit_test', mixed, tmp_path / 'full.npz', run=RunOptions(batch_size=2, progress=False))

    real = embed_mod._embed_samples
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(embed_mod, "_embed_samples", failing)
    with pytest.raises(KeyboardInterrupt):
        embed_manifest('chada_vit_test', mixed, out, run=RunOptions(batch_size=2, progress=False), output=OutputOptions(chunk_batches=1))
    parts = sorted(p.name for p in (tmp_path / "r.npz.parts").glob("chunk_*.npz"))
    assert parts == ["chunk_000000.npz", "chunk_000001.npz", "chunk_000002.npz"]
    assert not out.exists()

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(embed_mod, "_embed_samples", counting)
    calls["n"] = 0
    emb = embed_manifest('chada_vit_test', mixed, out, run=RunOptions(batch_size=2, progress=False), output=OutputOptions(chunk_batches=1))
    assert calls["n"] == 3  # 6 batches of 2 in all, 3 were done before the interruption
    np.testing.assert_allclose(emb.features["all"], full.features["all"], atol=1e-6)
    assert emb.meta["image_id"].tolist() == full.meta["image_id"].tolist()
    assert not (tmp_path / "r.npz.parts").exists()

    # parts made with other settings (another seed) are discarded, not mixed in
    monkeypatch.setattr(embed_mod, "_embed_samples", failing)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        embed_manifest('chada_vit_test', mixed, out, run=RunOptions(batch_size=2, seed=5, progress=False), output=OutputOptions(chunk_batches=1))
    monkeypatch.setattr(embed_mod, "_embed_samples", counting)
    calls["n"] = 0
    emb = embed_manifest('chada_vit_test', mixed, out, run=RunOptions(batch_size=2, progress=False), output=OutputOptions(chunk_batches=1))
    assert calls["n"] == 6
    np.testing.assert_allclose(emb.features["all"], full.features["all"], atol=1e-6)


def test_errors(mixed, tmp_path, capsys):
    rc = main(["embed", "--model", "no_such_model", "--manifest", str(mixed), "--out", str(tmp_path / "x.npz")])
    assert rc == 2
    assert "registered model name" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not supported"):
        embed_manifest('chada_vit_test', mixed, tmp_path / 'x.npz', ['mean'], run=RunOptions(progress=False))
    with pytest.raises(ValueError, match=".npz, .parquet, .h5ad"):
        embed_manifest('chada_vit_test', mixed, tmp_path / 'x.csv', run=RunOptions(progress=False))
    with pytest.raises(ValueError, match="exactly 3 channels"):
        embed_manifest('fixed_channel_vit_test', mixed, tmp_path / 'x.npz', run=RunOptions(progress=False))
    with pytest.raises(ValueError, match="empty"):
        embed_manifest('chada_vit_test', mixed, tmp_path / 'x.npz', run=RunOptions(progress=False), select=Selection(datasets=['nope']))
    with pytest.raises(TypeError):
        embed_images("chada_vit_test", [torch.rand(2, 32, 32)])


def test_recorded_image_size_is_used_and_said(tmp_path, capsys, caplog):
    """A pretrained folder records the size of the views it was trained on; embed uses it by default."""
    man = _write_manifest(tmp_path, [("A", 2, 32, 4)])
    run = tmp_path / "run"
    assert main(["pretrain", "model.name=chada_vit_test", "model.overrides.img_size=16", "head.out_dim=16",
                 "head.hidden_dim=16", "head.bottleneck_dim=8", "optim.epochs=1", "optim.warmup_epochs=0", "dino.warmup_teacher_temp_epochs=0", "optim.batch_size_per_gpu=2",
                 "augment.global_size=16", "augment.local_size=8", "augment.n_local=1", f"data.manifest={man}",
                 "data.size=32", "data.num_workers=0", "run.device=cpu", "run.threads=1", "run.progress=false",
                 "run.tensorboard=false", f"run.output_dir={run}"]) == 0  # fmt: skip
    import json

    assert json.loads((run / "teacher" / "config.json").read_text())["extra"]["image_size"] == 16
    capsys.readouterr()
    with caplog.at_level("INFO"):
        assert main(["embed", "--model", str(run / "teacher"), "--manifest", str(man), "--out",
                     str(tmp_path / "r.npz"), "--precision", "fp32", "--quiet"]) == 0  # fmt: skip
    assert "image size: 16 x 16 px (recorded by the model" in capsys.readouterr().out
    assert "the size the model was trained at" in caplog.text
    rec = load_embeddings(tmp_path / "r.npz")
    assert rec.info["image_size"] == 16 and rec.info["image_size_source"] == "model"
    given = embed_manifest(run / 'teacher', man, tmp_path / 'g.npz', image=ImageOptions(size=16), run=RunOptions(progress=False))
    np.testing.assert_array_equal(rec.features["cls"], given.features["cls"])
    caplog.clear()
    with caplog.at_level("WARNING"):
        native = embed_manifest(run / 'teacher', man, tmp_path / 'n.npz', image=ImageOptions(size=None), run=RunOptions(progress=False))
    assert native.info["image_size"] is None and "trained at 16 px" in caplog.text
    assert not np.allclose(native.features["cls"], rec.features["cls"])
    # a folder without the record (older exports, hand-saved models) keeps native sizes
    torch.manual_seed(0)
    create_model("chada_vit_test").save_pretrained(tmp_path / "plain")
    plain = embed_manifest(tmp_path / 'plain', man, tmp_path / 'p.npz', run=RunOptions(progress=False))
    assert plain.info["image_size"] is None and plain.info["image_size_source"] == "native"


def test_nan_policy_options_reach_the_reader(tmp_path, capfd):
    rng = np.random.default_rng(0)
    arr = rng.random((2, 32, 32)).astype(np.float32)
    bad, filled = arr.copy(), arr.copy()
    bad[1, 3, 4], filled[1, 3, 4] = np.nan, 0.25
    for name, a in (("bad", bad), ("filled", filled)):
        np.save(tmp_path / f"{name}.npy", a)
        pd.DataFrame([dict(image_id="x1", dataset="d", file=f"{name}.npy", channel_names="DAPI;Actin")]).to_csv(
            tmp_path / f"{name}.csv", index=False
        )
    for cmd in (["embed", "--model", "chada_vit_test"], ["features", "--kind", "shortcut"]):
        assert main([*cmd, "--manifest", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "e.npz"), "--quiet"]) == 2
        assert "NaN" in capfd.readouterr().err
        assert main([*cmd, "--manifest", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "r.npz"), "--quiet",
                     "--nan-policy", "replace", "--nan-fill", "0.25"]) == 0  # fmt: skip
        assert "x1" in capfd.readouterr().err  # the warning names the image it touched
        assert main([*cmd, "--manifest", str(tmp_path / "filled.csv"), "--out", str(tmp_path / "f.npz"),
                     "--quiet"]) == 0  # fmt: skip
        r, f = load_embeddings(tmp_path / "r.npz"), load_embeddings(tmp_path / "f.npz")
        np.testing.assert_array_equal(r.features["cls"], f.features["cls"])
        for p in ("e.npz", "r.npz", "f.npz"):
            (tmp_path / p).unlink(missing_ok=True)
    assert main(["embed", "--model", "chada_vit_test", "--manifest", str(tmp_path / "bad.csv"), "--out",
                 str(tmp_path / "e.npz"), "--nan-fill", "0"]) == 2  # fmt: skip
    assert "--nan-policy replace" in capfd.readouterr().err


def test_input_signatures_stat_and_hash(tmp_path):
    from chada.encode.inputs import row_signatures

    man = _write_manifest(tmp_path, [("A", 2, 16, 2)])
    rows = pd.read_csv(man).to_dict("records")
    stat0, hash0 = row_signatures(rows, tmp_path, "stat"), row_signatures(rows, tmp_path, "hash")
    assert len(set(stat0)) == 2 and len(set(hash0)) == 2
    # same size, same mtime, other bytes: only the content hash sees it
    f = tmp_path / "A_000.tif"
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert row_signatures(rows, tmp_path, "stat") == stat0
    changed = row_signatures(rows, tmp_path, "hash")
    assert changed[0] != hash0[0] and changed[1] == hash0[1]
    # another file for the row, or a missing one: both modes see it
    rows[1]["file"] = "A_000.tif"
    assert row_signatures(rows, tmp_path, "stat")[1] != stat0[1]
    rows[1]["file"] = "gone.tif"
    assert row_signatures(rows, tmp_path, "stat")[1] != stat0[1]
    with pytest.raises(ValueError, match="verify"):
        row_signatures(rows, tmp_path, "md5")


def test_verify_inputs_hash_recomputes_an_edit_that_keeps_size_and_mtime(tmp_path, monkeypatch, caplog):
    man = _write_manifest(tmp_path, [("A", 2, 32, 4)])
    out = tmp_path / "h.npz"
    real = embed_mod._embed_samples
    calls = {"n": 0}

    def stop_after_all(*a, **k):
        calls["n"] += 1
        feats = real(*a, **k)
        if calls["n"] == 2:
            raise KeyboardInterrupt  # chunk 0 (A_000, A_001) is written, chunk 1 is not
        return feats

    monkeypatch.setattr(embed_mod, "_embed_samples", stop_after_all)
    with pytest.raises(KeyboardInterrupt):
        embed_manifest('chada_vit_test', man, out, run=RunOptions(batch_size=2, progress=False), output=OutputOptions(chunk_batches=1, verify_inputs='hash'))
    monkeypatch.setattr(embed_mod, "_embed_samples", real)
    f = tmp_path / "A_000.tif"
    st = f.stat()
    new = np.random.default_rng(5).integers(0, 4000, (2, 32, 32), dtype=np.uint16)
    tifffile.imwrite(f, new, photometric="minisblack")
    assert f.stat().st_size == st.st_size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    with caplog.at_level("WARNING"):
        emb = embed_manifest('chada_vit_test', man, out, run=RunOptions(batch_size=2, progress=False), output=OutputOptions(chunk_batches=1, verify_inputs='hash'))  # fmt: skip
    assert "'A_000'" in caplog.text
    fresh = embed_manifest('chada_vit_test', man, tmp_path / 'f.npz', run=RunOptions(batch_size=2, progress=False), output=OutputOptions(chunk_batches=1))
    np.testing.assert_array_equal(emb.features["cls"], fresh.features["cls"])
