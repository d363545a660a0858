"""``embed_manifest`` (:mod:`chada.encode.embed`) driven by a stub encoder whose features are written
by hand (each image's channel count and mean pixel), so a run takes a fraction of a second: the run's
settings (the resume key) and ``info`` key by key, the image size chosen and what the log says about
it, the chunking, shards, the pool fallback note, the arguments each batch is encoded with, and the
single-cell refusals word for word."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

import chada.encode.embed as embed_mod
from chada.data.objects import ObjectOptions
from chada.encode.interface import Encoder
from chada.encode.options import ChannelOptions, ImageOptions, OutputOptions, RunOptions, Selection
from chada.errors import InputError
from tests.helpers.manifests import write_manifest


class Stub(Encoder):
    """``{"cls": [B, 1] channel count, "all": [B, 2] (channel count, mean pixel)}``; ``fallback``:
    pool -> pool computed when the channel counts differ; ``size``: the recorded image size."""

    def __init__(self, size: int | None = None, fallback: dict[str, str] | None = None) -> None:
        self.info = {"model": "stub", "kind": "stub", "arch": "stubnet", "layout": "x", "other": 1}
        self.size, self.fallback = size, fallback or {}
        self.batches: list[list[int]] = []
        self.sizes: list[tuple[int, int]] = []
        self.moved: list[torch.device] = []

    @property
    def recorded_image_size(self) -> int | None:
        return self.size

    def to(self, device: torch.device) -> Encoder:
        self.moved.append(device)
        return self

    def pool_map(self, pools, channel_counts):  # noqa: ANN001, ANN201
        return {p: self.fallback.get(p, p) if len(channel_counts) > 1 else p for p in pools}

    def encode_batch(self, batch, pools, device=None):  # noqa: ANN001, ANN201
        images = batch.split()
        self.batches.append([int(x.shape[0]) for x in images])
        self.sizes.append(tuple(batch.pixels.shape[-2:]))
        cols = {
            "cls": [[x.shape[0]] for x in images],
            "all": [[x.shape[0], float(x.mean())] for x in images],
            "mean": [[-float(x.shape[0])] for x in images],
        }
        return {p: np.array(cols[p], np.float32) for p in pools}


@pytest.fixture()
def settings_seen(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The settings each run hands to its chunk store (the resume key)."""
    seen: list[dict[str, Any]] = []
    real = embed_mod.ChunkStore

    def store(target, settings, resume=True):  # noqa: ANN001, ANN202
        seen.append({"target": target, "settings": dict(settings), "resume": resume})
        return real(target, settings, resume=resume)

    monkeypatch.setattr(embed_mod, "ChunkStore", store)
    return seen


QUIET = RunOptions(progress=False, batch_size=2)


def test_info_and_settings_of_a_run(tmp_path: Path, settings_seen: list[dict[str, Any]]) -> None:
    man = write_manifest(tmp_path, [("A", 3, 8, 3), ("B", 1, 8, 2)])
    enc = Stub()
    t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    emb = embed_mod.embed_manifest(enc, man, tmp_path / "e.npz", ["all", "cls", "all"], run=QUIET,
                                   image=ImageOptions(size=None, normalize="minmax", nan_policy="replace", nan_fill=0.5))  # fmt: skip
    assert list(emb.features) == ["all", "cls"]
    np.testing.assert_array_equal(emb.features["cls"][:, 0], [3, 3, 3, 1, 1])
    assert enc.moved == [torch.device("cpu")]
    info = emb.info
    created = info.pop("created")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", created) and created >= t0
    for late in ("feature_dims", "n_rows", "seconds", "format"):
        info.pop(late, None)
    assert info == {
        "model": "stub", "kind": "stub", "arch": "stubnet", "layout": "x", "other": 1,
        "pools": ["all", "cls"], "pool_fallback": None, "image_size": None, "image_size_source": "native",
        "normalize": "minmax", "nan_policy": "replace", "nan_fill": 0.5, "batch_size": 2, "device": "cpu",
        "precision": None, "manifest": str(man.resolve()), "datasets": None, "split": None, "n_images": 5,
        "channel_counts": [1, 3], "channel_policy": settings_seen[0]["settings"]["channel_policy"],
        "torch": torch.__version__,
    }  # fmt: skip
    [seen] = settings_seen
    assert seen["target"] == tmp_path / "e.npz" and seen["resume"] is True
    settings = seen["settings"]
    import hashlib

    ids = hashlib.sha256(b"A_000\nA_001\nA_002\nB_000\nB_001").hexdigest()
    assert settings == {
        "model": "stub", "encoder": {"kind": "stub", "layout": "x", "arch": "stubnet"}, "seed": None,
        "manifest": str(man.resolve()), "image_ids": ids, "pools": {"all": "all", "cls": "cls"},
        "image_size": None, "batch_size": 2, "chunk_batches": 20, "normalize": "minmax",
        "channel_policy": settings["channel_policy"], "nan_policy": "replace", "nan_fill": 0.5,
        "verify_inputs": "stat", "precision": None,
    }  # fmt: skip
    assert settings["channel_policy"] == ChannelOptions().policy(None).to_dict()


def test_a_data_frame_selection_and_a_fallback(tmp_path: Path, settings_seen: list[dict[str, Any]]) -> None:
    man = write_manifest(tmp_path, [("A", 3, 8, 3), ("B", 1, 8, 2), ("C", 2, 8, 1)])
    frame = pd.read_csv(man)
    enc = Stub(fallback={"cls": "mean"})
    emb = embed_mod.embed_manifest(enc, frame, tmp_path / "f.npz", ("cls", "all"), run=QUIET,
                                   select=Selection(datasets=["A", "B"], root=tmp_path))  # fmt: skip
    assert emb.info["manifest"] == "<DataFrame>" and settings_seen[0]["settings"]["manifest"] == "<DataFrame>"
    assert emb.info["datasets"] == ["A", "B"] and emb.info["n_images"] == 5
    assert emb.info["pool_fallback"] == {"cls": "mean"}
    assert emb.info["note"] == (
        "images have different channel counts: concatenating pools were replaced by their "
        "mean-over-channels form (pool_fallback); embed one dataset at a time for the concatenation"
    )
    np.testing.assert_array_equal(emb.features["cls"][:, 0], [-3, -3, -3, -1, -1])
    only_a = embed_mod.embed_manifest(Stub(fallback={"cls": "mean"}), frame, tmp_path / "a.npz", ["cls"],
                                      run=QUIET, select=Selection(datasets=["A"], split="train", root=tmp_path))  # fmt: skip
    assert only_a.info["pool_fallback"] is None and "note" not in only_a.info
    assert only_a.info["split"] == "train" and only_a.info["n_images"] == 2  # A_001 and A_002


def test_chunks_hold_batch_size_times_chunk_batches_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    man = write_manifest(tmp_path, [("A", 2, 8, 7)])
    calls: list[int] = []
    real = embed_mod._embed_samples

    def count(encoder, samples, *a):  # noqa: ANN001, ANN202
        calls.append(len(samples))
        return real(encoder, samples, *a)

    monkeypatch.setattr(embed_mod, "_embed_samples", count)
    chunked: list[list[list[int]]] = []
    real_encode = embed_mod.encode_chunks

    def spy(seam, encoder, data, mine, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        chunked.append([list(map(int, rows)) for rows in mine.values()])
        return real_encode(seam, encoder, data, mine, *a, **k)

    monkeypatch.setattr(embed_mod, "encode_chunks", spy)
    embed_mod.embed_manifest(Stub(), man, tmp_path / "c.npz", ["cls"], run=RunOptions(batch_size=2, progress=False),
                             output=OutputOptions(chunk_batches=2))  # fmt: skip
    assert chunked == [[[0, 1, 2, 3], [4, 5, 6]]] and calls == [2, 2, 2, 1]


def test_each_batch_is_encoded_with_the_pool_map_device_and_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    man = write_manifest(tmp_path, [("A", 2, 8, 2), ("B", 1, 8, 1)])
    seen: list[tuple[Any, ...]] = []

    class Recording(Stub):
        def encode_samples(self, samples, pool_map, device=None, policy=None):  # noqa: ANN001, ANN201
            seen.append((len(samples), dict(pool_map), device, policy))
            return super().encode_samples(samples, pool_map, device, policy)

    opts = ChannelOptions(order=["A_ch0", "A_ch1", "B_ch0"])
    embed_mod.embed_manifest(Recording(fallback={"cls": "mean"}), man, tmp_path / "p.npz", ["cls"],
                             run=RunOptions(batch_size=4, progress=False), channels=opts)  # fmt: skip
    [(n, pool_map, device, policy)] = seen
    assert (n, pool_map, device) == (3, {"cls": "mean"}, torch.device("cpu"))
    assert policy.to_dict() == opts.policy(None).to_dict() and policy.to_dict()["canonical"] == [
        "A_ch0",
        "A_ch1",
        "B_ch0",
    ]


def test_a_shard_records_its_part(tmp_path: Path, settings_seen: list[dict[str, Any]]) -> None:
    man = write_manifest(tmp_path, [("A", 2, 8, 5)])
    out = tmp_path / "s.npz"
    emb = embed_mod.embed_manifest(Stub(), man, out, ["cls"], run=RunOptions(batch_size=1, progress=False),
                                   output=OutputOptions(chunk_batches=1, shard=(1, 2)))  # fmt: skip
    assert emb.info["shard"] == [1, 2] and emb.info["n_images"] == 3  # chunks 5 // 2 = 2 to 4
    assert emb.meta["image_id"].tolist() == ["A_002", "A_003", "A_004"]
    assert settings_seen[0]["target"] == embed_mod.shard_path(out, (1, 2)) and not out.exists()
    whole = embed_mod.embed_manifest(Stub(), man, tmp_path / "w.npz", ["cls"], run=QUIET,
                                     output=OutputOptions(resume=False))  # fmt: skip
    assert "shard" not in whole.info and whole.info["n_images"] == 5
    assert settings_seen[1]["resume"] is False


def test_image_size_and_what_the_log_says(caplog: pytest.LogCaptureFixture) -> None:
    size = embed_mod._image_size
    with caplog.at_level(logging.INFO, logger="chada.encode.embed"):
        assert size(Stub(16), "model") == (16, "model")
        assert size(Stub(None), "model") == (None, "native")
        assert size(Stub(None), None) == (None, "native")
        assert size(Stub(None), 24) == (24, "given")
        assert size(Stub(16), 16) == (16, "given")
    assert [r.getMessage() for r in caplog.records] == [
        "image size 16 px: the size the model was trained at (recorded in its config.json); "
        "--image-size N or --image-size native to change it"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="chada.encode.embed"):
        assert size(Stub(16), None) == (None, "native")
        assert size(Stub(16), 24) == (24, "given")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "native image sizes, but the model was trained at 16 px (recorded in its config.json)"),
        ("WARNING", "image size 24 px, but the model was trained at 16 px (recorded in its config.json): "
                    "features differ from the ones at the recorded size"),
    ]  # fmt: skip
    got = size(Stub(None), np.int64(20))
    assert got == (20, "given") and type(got[0]) is int


def test_run_arguments_and_refusals(tmp_path: Path) -> None:
    assert embed_mod._check_args(str(tmp_path / "x.npz"), ("cls", "all", "cls")) == (
        ["cls", "all"],
        tmp_path / "x.npz",
    )
    with pytest.raises(ValueError) as err:
        embed_mod._check_args(tmp_path / "x.npz", [])
    assert str(err.value) == "pools is empty: ask for at least one of 'cls', 'all'"
    with pytest.raises(ValueError, match=r"\.npz, \.parquet, \.h5ad"):
        embed_mod._check_args(tmp_path / "x.csv", ["cls"])
    man = write_manifest(tmp_path, [("A", 2, 8, 1)])
    with pytest.raises(ValueError) as err:
        embed_mod.embed_manifest(Stub(), man, tmp_path / "e.npz", run=QUIET, select=Selection(split="val"))
    assert str(err.value) == "no image to embed: the manifest (after the dataset/split filters) is empty"


def test_a_passed_encoder_gets_the_runs_precision(
    tmp_path: Path, settings_seen: list[dict[str, Any]]
) -> None:
    from chada.encode.encoders import ModelEncoder
    from chada.models import create_model

    man = write_manifest(tmp_path, [("A", 2, 16, 1)])
    torch.manual_seed(0)
    enc = ModelEncoder(create_model("chada_vit_test"), {"model": "m", "source": "pretrained"})
    emb = embed_mod.embed_manifest(enc, man, tmp_path / "b.npz", ["cls"], run=RunOptions(dtype=torch.bfloat16, progress=False))  # fmt: skip
    assert enc.dtype == torch.bfloat16 and emb.info["precision"] == "bf16"
    assert settings_seen[0]["settings"]["precision"] == "bf16"
    assert settings_seen[0]["settings"]["weights"] == enc.weights_digest()


# -- single cells (--objects) -------------------------------------------------------------------------------


def _plate(folder: Path, column: str = "objects_file") -> Path:
    """Two 1-channel 24 x 24 fields with two square objects each, and their label images."""
    rows = []
    for i in range(2):
        img = np.full((1, 24, 24), 100 * (i + 1), np.uint16)
        labels = np.zeros((24, 24), np.uint16)
        labels[4:10, 4:10], labels[12:20, 12:20] = 1, 2
        tifffile.imwrite(folder / f"f{i}.tif", img, photometric="minisblack")
        tifffile.imwrite(folder / f"f{i}_lab.tif", labels)
        rows.append({"image_id": f"f{i}", "dataset": "p", "file": f"f{i}.tif", "channel_names": "DNA",
                     column: f"f{i}_lab.tif"})  # fmt: skip
    path = folder / "plate.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_cells_take_the_models_size_and_chunk_by_fields(tmp_path: Path, settings_seen: list[dict[str, Any]],
                                                       caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    man = _plate(tmp_path)
    with caplog.at_level(logging.INFO, logger="chada.encode.embed"):
        emb = embed_mod.embed_manifest(Stub(12), man, tmp_path / "c.npz", ["cls"], objects=ObjectOptions(),
                                       run=RunOptions(batch_size=3, progress=False),
                                       output=OutputOptions(chunk_batches=1))  # fmt: skip
    assert "crop size 12 px: the model's image size (--crop-size to change)" in caplog.messages
    want = {**ObjectOptions().to_dict(), "crop_size": 12}
    assert emb.info["objects"] == want and settings_seen[0]["settings"]["objects"] == want
    assert len(emb.features["cls"]) == 4 and emb.meta["image_id"].tolist() == ["f0", "f0", "f1", "f1"]
    whole = embed_mod.embed_manifest(Stub(12), man, tmp_path / "w.npz", ["cls"], run=QUIET)
    assert "objects" not in whole.info and "objects" not in settings_seen[1]["settings"]


def test_cells_are_resized_to_the_models_size(tmp_path: Path) -> None:
    enc = Stub(16)
    embed_mod.embed_manifest(enc, _plate(tmp_path), tmp_path / "c.npz", ["cls"], objects=ObjectOptions(crop_size=8),
                             run=QUIET)  # fmt: skip
    assert enc.sizes == [(16, 16), (16, 16)]  # 8 x 8 crops, one field a batch
    native = Stub(None)
    embed_mod.embed_manifest(native, _plate(tmp_path), tmp_path / "n.npz", ["cls"], objects=ObjectOptions(crop_size=8),
                             run=QUIET)  # fmt: skip
    assert native.sizes == [(8, 8), (8, 8)]


def test_cells_chunk_by_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    man = _plate(tmp_path)
    chunked: list[list[list[int]]] = []
    real_encode = embed_mod.encode_chunks

    def spy(seam, encoder, data, mine, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        chunked.append([list(map(int, rows)) for rows in mine.values()])
        assert k["cells"] is True
        return real_encode(seam, encoder, data, mine, *a, **k)

    monkeypatch.setattr(embed_mod, "encode_chunks", spy)
    embed_mod.embed_manifest(Stub(), man, tmp_path / "c.npz", ["cls"], objects=ObjectOptions(crop_size=8),
                             run=RunOptions(batch_size=3, progress=False), output=OutputOptions(chunk_batches=1))  # fmt: skip
    assert chunked == [[[0], [1]]]


def test_cell_refusals(tmp_path: Path) -> None:
    man = _plate(tmp_path, column="labels")
    with pytest.raises(InputError) as err:
        embed_mod.embed_manifest(Stub(12), man, tmp_path / "c.npz", objects=ObjectOptions(), run=QUIET)
    assert str(err.value) == (
        f"{man} has no 'objects_file' column: --objects needs a label image per row (`chada data scan --objects-pattern`)"
    )
    with pytest.raises(InputError) as err:
        embed_mod.embed_manifest(Stub(12), pd.read_csv(man), tmp_path / "c.npz", objects=ObjectOptions(), run=QUIET,
                                 select=Selection(root=tmp_path))  # fmt: skip
    assert str(err.value).startswith("the manifest has no 'objects_file' column")
    emb = embed_mod.embed_manifest(Stub(), man, tmp_path / "ok.npz", ["cls"], run=QUIET,
                                   objects=ObjectOptions(column="labels", crop_size=8))  # fmt: skip
    assert len(emb.features["cls"]) == 4
    with pytest.raises(InputError) as err:
        embed_mod.embed_manifest(
            Stub(None), man, tmp_path / "c.npz", objects=ObjectOptions(column="labels"), run=QUIET
        )
    assert (
        str(err.value)
        == "--objects needs a crop size: --crop-size N, or a model that recorded its image size"
    )


def test_cell_chunks_are_keyed_by_their_label_image_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    man = _plate(tmp_path)
    keys: list[list[str]] = []
    real_encode = embed_mod.encode_chunks

    def spy(seam, encoder, data, mine, store, inputs, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        keys.append(list(inputs))
        return real_encode(seam, encoder, data, mine, store, inputs, *a, **k)

    monkeypatch.setattr(embed_mod, "encode_chunks", spy)
    from chada.encode.inputs import row_signature

    for verify in ("stat", "hash"):
        embed_mod.embed_manifest(Stub(), man, tmp_path / "c.npz", ["cls"], objects=ObjectOptions(crop_size=8),
                                 run=QUIET, output=OutputOptions(verify_inputs=verify))  # fmt: skip
        sig = [row_signature({"file": str(tmp_path / f"f{i}.tif")}, tmp_path, verify) +
               row_signature({"file": str(tmp_path / f"f{i}_lab.tif")}, tmp_path, verify) for i in range(2)]  # fmt: skip
        assert keys[-1] == sig
    assert keys[0] != keys[1]


# -- before any work, and what the run shows ------------------------------------------------------------------


def test_an_unusable_output_and_repeated_ids_are_refused_by_name(tmp_path: Path) -> None:
    man = write_manifest(tmp_path, [("A", 2, 8, 2)])
    (tmp_path / "out.npz").mkdir()
    with pytest.raises(IsADirectoryError) as err:
        embed_mod.embed_manifest(Stub(), man, tmp_path / "out.npz", run=QUIET)
    assert str(err.value).startswith(f"embeddings file {tmp_path / 'out.npz'} is a folder; give a file path")
    frame = pd.read_csv(man)
    frame.loc[1, "image_id"] = "A_000"
    frame.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(InputError) as err:
        embed_mod.embed_manifest(Stub(), tmp_path / "dup.csv", tmp_path / "e.npz", run=QUIET)
    assert str(err.value) == (
        f"duplicate image ids in {tmp_path / 'dup.csv'}: 'A_000' on rows 1, 2. Every image needs its own "
        "image_id (`chada data check` lists every problem)"
    )


def test_the_models_channel_order_keys_the_run(tmp_path: Path, settings_seen: list[dict[str, Any]]) -> None:
    """A model that recorded its channel vocabulary slots the channels by it, and the run records it."""

    class WithModule(Stub):
        def check_forward(self, *a: Any) -> None:  # no patch grid to check: the stub reads no tokens
            return None

    enc = WithModule()
    enc.module = torch.nn.Module()
    enc.module.pretrained_extra = {"channel_vocab": ["A_ch1", "A_ch0"]}
    man = write_manifest(tmp_path, [("A", 2, 8, 1)])
    emb = embed_mod.embed_manifest(enc, man, tmp_path / "v.npz", ["cls"], run=QUIET)
    assert settings_seen[0]["settings"]["channel_policy"]["canonical"] == ["A_ch1", "A_ch0"]
    assert emb.info["channel_policy"]["canonical"] == ["A_ch1", "A_ch0"]


def test_progress_bars_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    man = write_manifest(tmp_path, [("A", 2, 8, 2)])
    hashed = OutputOptions(verify_inputs="hash")
    embed_mod.embed_manifest(Stub(), man, tmp_path / "q.npz", ["cls"], run=QUIET, output=hashed)
    assert capsys.readouterr().err == ""
    embed_mod.embed_manifest(
        Stub(), man, tmp_path / "p.npz", ["cls"], run=RunOptions(batch_size=2), output=hashed
    )
    err = capsys.readouterr().err
    assert "hashing input files" in err and "embed stub" in err
