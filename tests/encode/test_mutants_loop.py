"""chada.encode.loop called directly: which chunks are reused and what the run says about the others,
what each chunk file receives (rows, features, channel names, input signatures, cells' objects), how
cells are batched, and the metadata rows of a chunk (issue 26 item 10, mutation testing of
``chada.encode.loop``). The encoder is a stub whose feature is the image's mean pixel, so every
expected array is written out in the test."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from chada.encode import loop
from chada.encode.chunks import ChunkStore
from chada.encode.interface import Encoder

POOLS = ["cls"]


class Stub(Encoder):
    """No module; records the samples handed to ``check_forward``."""

    def __init__(self) -> None:
        self.module = None
        self.info = {"model": "stubby"}
        self.checked: list[list[str]] = []
        self.warned_sets: set[int] = set()

    def check_forward(self, samples, device, where, warned) -> None:  # noqa: ANN001
        self.checked.append([s["image_id"] for s in samples])
        assert where("missing") == "file unknown"
        assert device == torch.device("cpu") and isinstance(warned, set)
        self.warned_sets.add(id(warned))  # one set for the whole run: each warning is said once

    def encode_batch(self, batch, pools, device=None):  # noqa: ANN001
        raise AssertionError("the loop calls its encode function, not encode_batch")


def mean_encode(encoder, samples, pool_map, dev, policy):  # noqa: ANN001
    """``{"cls": [n, 1]}``: each sample's mean pixel; records each call's image ids on the encoder."""
    encoder.calls = getattr(encoder, "calls", []) + [[s["image_id"] for s in samples]]
    assert pool_map == {"cls": "cls"} and policy == "policy" and dev == torch.device("cpu")
    if hasattr(encoder, "events"):
        encoder.events.append(("encode", [s["image_id"] for s in samples]))
    return {"cls": np.array([[float(s["image"].mean())] for s in samples], dtype=np.float32)}


class Images:
    """Image ``i`` is a ``[1, 2, 2]`` tensor filled with ``i``; ids ``img0``, ``img1``, ..."""

    def __init__(self, n: int) -> None:
        self.frame = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)]})
        self._rows: list[dict[str, Any]] = []
        self.root = "."
        self.reads: list[int] = []
        self.events: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int) -> dict[str, Any]:
        self.reads.append(i)
        if self.events is not None:
            self.events.append(("read", i))
        return {"image": torch.full((1, 2, 2), float(i)), "image_id": f"img{i}", "channel_names": [f"s{i}"]}


def run(ds, chunks, store, inputs, batch_size=2, cells=False, workers=0, events=None):  # noqa: ANN001
    enc = Stub()
    if events is not None:
        enc.events = events
    args = (mean_encode, enc, ds, chunks, store, inputs, POOLS, {"cls": "cls"}, torch.device("cpu"), "policy",
            batch_size, workers, False)  # fmt: skip
    if cells:
        loop.encode_chunks(*args, cells=True)
    else:
        loop.encode_chunks(*args)  # whole images by default
    assert len(enc.warned_sets) <= 1
    return enc


def chunks_of(n: int, size: int) -> dict[int, np.ndarray]:
    return {k: np.arange(s, min(s + size, n)) for k, s in enumerate(range(0, n, size))}


# ----------------------------------------------------------------------------------- encode_chunks
def test_each_chunk_file_holds_its_rows_features_names_and_inputs(tmp_path):
    ds, inputs = Images(5), [f"sig{i}" for i in range(5)]
    store = ChunkStore(tmp_path / "out.npz", {"s": 1})
    enc = run(ds, chunks_of(5, 2), store, inputs)
    assert enc.calls == [["img0", "img1"], ["img2", "img3"], ["img4"]]
    assert enc.checked == enc.calls  # every batch checked before its forward pass
    for k, rows in chunks_of(5, 2).items():
        names, why = store.check(k, rows, POOLS, [inputs[i] for i in rows])
        assert why is None and names == [[f"s{i}"] for i in rows]
        np.testing.assert_array_equal(store.read(k, POOLS)["cls"], np.array([[float(i)] for i in rows]))
        assert store.read_objects(k) is None


def test_reused_chunks_are_not_read_again(tmp_path):
    ds, inputs = Images(6), [f"sig{i}" for i in range(6)]
    store = ChunkStore(tmp_path / "out.npz", {"s": 1})
    run(ds, {1: np.arange(2, 4)}, store, inputs)  # chunk 1 only, as an interrupted run left it
    ds.reads.clear()
    enc = run(ds, chunks_of(6, 2), store, inputs)
    assert sorted(ds.reads) == [0, 1, 4, 5]
    assert enc.calls == [["img0", "img1"], ["img4", "img5"]]
    np.testing.assert_array_equal(store.read(2, POOLS)["cls"], [[4.0], [5.0]])
    ds.reads.clear()
    run(ds, chunks_of(6, 2), store, inputs)  # all reusable: nothing read, nothing encoded
    assert ds.reads == []


def test_a_changed_input_recomputes_its_chunk_and_names_the_image(tmp_path, caplog):
    ds, inputs = Images(4), [f"sig{i}" for i in range(4)]
    store = ChunkStore(tmp_path / "out.npz", {"s": 1})
    run(ds, chunks_of(4, 2), store, inputs)
    new = ["sig0", "sig1", "sig2", "NEW"]
    ds.reads.clear()
    with caplog.at_level(logging.INFO, logger="chada.encode.loop"):
        run(ds, chunks_of(4, 2), store, new)
    assert sorted(ds.reads) == [2, 3]
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [
        "1 image(s) read other or changed files since the interrupted run ('img3'): recomputing 1 chunk(s)",
        f"resuming: 1 of 2 chunks already embedded in {store.dir}",
    ]
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert store.check(1, np.arange(2, 4), POOLS, new[2:]) == ([["s2"], ["s3"]], None)


@pytest.mark.parametrize(("n", "chunk", "listed"), [(5, 5, ""), (6, 6, " and 1 more"), (8, 4, " and 3 more")])
def test_changed_images_are_named_five_at_most_then_counted(tmp_path, caplog, n, chunk, listed):
    ds = Images(n)
    store = ChunkStore(tmp_path / "out.npz", {"s": 1})
    run(ds, chunks_of(n, chunk), store, [f"a{i}" for i in range(n)], batch_size=chunk)
    with caplog.at_level(logging.WARNING, logger="chada.encode.loop"):
        done = loop.reusable_chunks(store, chunks_of(n, chunk), [f"b{i}" for i in range(n)], POOLS, ds.frame)
    assert done == {}
    shown = ", ".join(f"'img{i}'" for i in range(5))
    assert [r.getMessage() for r in caplog.records] == [
        f"{n} image(s) read other or changed files since the interrupted run ({shown}{listed}): "
        f"recomputing {n // chunk} chunk(s)"
    ]


def test_a_damaged_chunk_is_recomputed_with_its_reason(tmp_path, caplog):
    ds, inputs = Images(4), [f"sig{i}" for i in range(4)]
    store = ChunkStore(tmp_path / "out.npz", {"s": 1})
    run(ds, chunks_of(4, 2), store, inputs)
    store.path(0).write_bytes(b"garbage")
    with caplog.at_level(logging.INFO, logger="chada.encode.loop"):
        done = loop.reusable_chunks(store, chunks_of(4, 2), inputs, POOLS, ds.frame)
    assert list(done) == [1] and done[1] == [["s2"], ["s3"]]
    assert [r.getMessage() for r in caplog.records] == [
        "recomputing chunk 0: chunk_000000.npz is unreadable (ValueError)",
        f"resuming: 1 of 2 chunks already embedded in {store.dir}",
    ]


def test_a_fresh_store_says_nothing(tmp_path, caplog):
    ds = Images(2)
    store = ChunkStore(tmp_path / "out.npz", {"s": 1})
    with caplog.at_level(logging.DEBUG, logger="chada.encode.loop"):
        assert loop.reusable_chunks(store, chunks_of(2, 2), ["a", "b"], POOLS, ds.frame) == {}
    assert caplog.records == []


def test_the_progress_bar_counts_batches_or_fields(tmp_path, monkeypatch):
    import tqdm.auto

    made: list[dict[str, Any]] = []

    class Bar:
        def __init__(self, **kw: Any) -> None:
            made.append(kw)
            kw["updates"] = 0

        def update(self, n: int) -> None:
            made[-1]["updates"] += n

        def close(self) -> None:
            made[-1]["closed"] = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    run(Images(5), chunks_of(5, 2), ChunkStore(tmp_path / "a.npz", {"s": 1}), list("abcde"))
    assert made == [{"total": 3, "desc": "embed stubby", "unit": "batch", "disable": True, "updates": 3,
                     "closed": True}]  # fmt: skip
    made.clear()
    run(Images(4), chunks_of(4, 4), ChunkStore(tmp_path / "c.npz", {"s": 1}), list("abcd"), batch_size=3)
    assert made[0]["total"] == 2 and type(made[0]["total"]) is int
    made.clear()
    run(Fields([2, 1]), {0: np.arange(2)}, ChunkStore(tmp_path / "b.npz", {"s": 1}), ["a", "b"], cells=True)
    assert made == [{"total": 2, "desc": "embed stubby", "unit": "field", "disable": True, "updates": 2,
                     "closed": True}]  # fmt: skip


# ------------------------------------------------------------------------------------------- cells
class Fields:
    """Field ``f`` holds ``counts[f]`` cells; cell ``j`` of field ``f`` is filled with ``10 f + j``."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts
        self.events: list[Any] | None = None
        self.frame = pd.DataFrame({"image_id": [f"f{i}" for i in range(len(counts))]})
        self._rows: list[dict[str, Any]] = []
        self.root = "."

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, f: int) -> dict[str, Any]:
        if self.events is not None:
            self.events.append(("read", f))
        n = self.counts[f]
        image = {"image_id": f"f{f}", "dataset": "d", "split": "", "label": None, "meta": {}}
        objects = {
            "object_id": np.arange(1, n + 1, dtype=np.int64),
            "area": np.full(n, 7 + f, dtype=np.int64),
        }
        crops = [torch.full((1, 2, 2), float(10 * f + j)) for j in range(n)]
        return {"image": image, "objects": objects, "crops": crops, "channel_names": [f"n{f}"], "field": f}


def test_cells_are_batched_within_a_chunk_and_stored_with_their_objects(tmp_path):
    ds = Fields([3, 2, 4, 1])
    store = ChunkStore(tmp_path / "out.npz", {"s": 1})
    chunks = {0: np.arange(0, 2), 1: np.arange(2, 4)}
    enc = run(ds, chunks, store, ["a", "b", "c", "d"], batch_size=2, cells=True)
    ids = [[f"f{f}" for f in call] for call in [[0, 0], [0, 1], [1], [2, 2], [2, 2], [3]]]
    assert enc.calls == ids  # full batches of 2, and the rest at each chunk's end
    np.testing.assert_array_equal(store.read(0, POOLS)["cls"], [[0.0], [1.0], [2.0], [10.0], [11.0]])
    np.testing.assert_array_equal(store.read(1, POOLS)["cls"], [[20.0], [21.0], [22.0], [23.0], [30.0]])
    obj = store.read_objects(1)
    np.testing.assert_array_equal(obj["field"], [2, 2, 2, 2, 3])
    np.testing.assert_array_equal(obj["object_id"], [1, 2, 3, 4, 1])
    np.testing.assert_array_equal(obj["area"], [9, 9, 9, 9, 10])
    assert store.read_names(1) == [["n2"], ["n3"]]
    assert store.count(0, chunks[0]) == 5


def test_a_field_without_cells_and_a_last_partial_batch(tmp_path):
    ds = Fields([0, 3])
    store = ChunkStore(tmp_path / "out.npz", {"s": 1})
    enc = run(ds, {0: np.arange(2)}, store, ["a", "b"], batch_size=2, cells=True)
    assert enc.calls == [["f1", "f1"], ["f1"]]
    np.testing.assert_array_equal(store.read(0, POOLS)["cls"], [[10.0], [11.0], [12.0]])
    np.testing.assert_array_equal(store.read_objects(0)["field"], [1, 1, 1])


def test_chunk_accumulator():
    acc = loop._Chunk(["a", "b"])
    assert acc.object_table() is None
    out = acc.arrays()
    assert out["a"].shape == (0, 0) and out["a"].dtype == np.float32
    acc.add({"a": np.ones((2, 3)), "b": np.zeros((0, 0))}, [["x"], ["y"]])
    acc.add({"a": np.full((1, 3), 2.0), "b": np.ones((1, 4))}, [["z"]])
    assert acc.names == [["x"], ["y"], ["z"]]
    np.testing.assert_array_equal(acc.arrays()["a"], [[1, 1, 1], [1, 1, 1], [2, 2, 2]])
    assert acc.arrays()["b"].shape == (1, 4)  # the empty batch is not concatenated
    acc.objects = [{"k": np.array([1, 2]), "v": np.array([5, 6])}, {"k": np.array([3]), "v": np.array([7])}]
    table = acc.object_table()
    assert list(table) == ["k", "v"]
    np.testing.assert_array_equal(table["k"], [1, 2, 3])
    np.testing.assert_array_equal(table["v"], [5, 6, 7])


# -------------------------------------------------------------------------------------- metadata
class Policy:
    def __init__(self) -> None:
        self.asked: list[tuple[list[str], str]] = []

    def resolve(self, names: list[str], image_id: str) -> list[int]:
        self.asked.append((list(names), image_id))
        return [len(n) for n in names]


def test_meta_frame_adds_names_counts_slots_and_keeps_missing_strings_as_none():
    frame = pd.DataFrame(
        {"image_id": ["a", "b"], "label": pd.array(["x", None], dtype="string"), "n": [1, 2]}, index=[5, 9]
    )
    pol = Policy()
    meta = loop.meta_frame(frame, [["dna", "actin"], ["dna"]], pol)
    assert list(meta.columns) == ["image_id", "label", "n", "channel_names", "n_channels", "channel_slots"]
    assert meta["label"].tolist() == ["x", None] and meta["label"].dtype == object
    assert meta["channel_names"].tolist() == [["dna", "actin"], ["dna"]]
    assert meta["n_channels"].tolist() == [2, 1]
    assert meta["channel_slots"].tolist() == [[3, 5], [3]]
    assert pol.asked == [(["dna", "actin"], "a"), (["dna"], "b")]
    assert list(meta.index) == [5, 9]
    assert frame["label"].dtype == "string"  # the caller's frame is not changed


def test_chunk_meta_of_whole_images_and_of_cells():
    from chada.data.objects import OBJECT_COLUMNS

    frame = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "well": ["A1", "A2", "B1", "B2"]})
    rows = np.array([2, 3])
    meta = loop.chunk_meta(frame, rows, [["x"], ["y", "z"]], Policy(), None)
    assert meta["image_id"].tolist() == ["c", "d"] and list(meta.index) == [0, 1]
    assert meta["n_channels"].tolist() == [1, 2]
    objects = {c: np.arange(3) + 10 * i for i, c in enumerate(OBJECT_COLUMNS)}
    objects["object_id"] = np.array([4, 7, 1])
    objects["field"] = np.array([2, 2, 3])  # global rows
    cells = loop.chunk_meta(frame, rows, [["x"], ["y", "z"]], Policy(), objects)
    assert cells["image_id"].tolist() == ["c", "c", "d"]
    assert cells["well"].tolist() == ["B1", "B1", "B2"]
    assert cells["n_channels"].tolist() == [1, 1, 2]
    assert cells["cell_id"].tolist() == ["c_4", "c_7", "d_1"]
    for c in OBJECT_COLUMNS:
        np.testing.assert_array_equal(cells[c], objects[c])
    assert list(cells.index) == [0, 1, 2]
    assert list(cells.columns) == ["image_id", "well", "channel_names", "n_channels", "channel_slots",
                                   *OBJECT_COLUMNS, "cell_id"]  # fmt: skip


def test_list_collate_keeps_the_samples_as_they_are():
    samples = [{"a": 1}, {"b": 2}]
    assert loop._list_collate(samples) is samples


@pytest.mark.parametrize("n", [1, 4])
def test_one_chunk_of_the_whole_manifest(tmp_path, n):
    ds = Images(n)
    store = ChunkStore(tmp_path / "out.npz", {"s": 1})
    enc = run(ds, {0: np.arange(n)}, store, ["x"] * n, batch_size=4)
    assert enc.calls == [[f"img{i}" for i in range(n)]]
    np.testing.assert_array_equal(store.assemble([np.arange(n)], POOLS)["cls"], np.arange(n)[:, None])


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
def test_the_loader_reads_in_order_with_the_requested_workers_and_pins_memory_for_cuda_only(
    tmp_path, monkeypatch
):
    import torch.utils.data as tud

    seen: list[dict[str, Any]] = []

    class Recorder(tud.DataLoader):
        def __init__(self, dataset: Any, **kw: Any) -> None:
            seen.append(kw)
            super().__init__(dataset, **kw)

    monkeypatch.setattr(tud, "DataLoader", Recorder)
    ds = Images(3)
    for dev in ("cpu", "cuda"):
        loop.encode_chunks(
            mean_encode if dev == "cpu" else lambda e, s, *_: {"cls": np.zeros((len(s), 1), np.float32)},
            Stub() if dev == "cpu" else NoCheck(), ds, {0: np.arange(3)},
            ChunkStore(tmp_path / f"{dev}.npz", {"s": 1}), ["a", "b", "c"], POOLS, {"cls": "cls"},
            torch.device(dev), "policy", 2, 0, False,
        )  # fmt: skip
    assert [{k: v for k, v in kw.items() if k != "collate_fn"} for kw in seen] == [
        {"batch_size": 2, "shuffle": False, "num_workers": 0, "pin_memory": False},
        {"batch_size": 2, "shuffle": False, "num_workers": 0, "pin_memory": True},
    ]
    assert all(kw["collate_fn"] is loop._list_collate for kw in seen)


class NoCheck(Stub):
    def check_forward(self, samples, device, where, warned) -> None:  # noqa: ANN001
        pass


def test_worker_processes_read_the_images(tmp_path):
    ds = Images(3)
    store = ChunkStore(tmp_path / "out.npz", {"s": 1})
    run(ds, {0: np.arange(3)}, store, ["a", "b", "c"], workers=1)
    assert ds.reads == []  # read in the worker, not here
    np.testing.assert_array_equal(store.read(0, POOLS)["cls"], [[0.0], [1.0], [2.0]])


def test_a_full_batch_of_cells_is_encoded_before_the_next_field_is_read(tmp_path):
    ds = Fields([2, 2, 1])
    ds.events = events = []
    run(ds, {0: np.arange(3)}, ChunkStore(tmp_path / "out.npz", {"s": 1}), ["a", "b", "c"], cells=True,
        events=events)  # fmt: skip
    assert events == [("read", 0), ("encode", ["f0", "f0"]), ("read", 1), ("encode", ["f1", "f1"]),
                      ("read", 2), ("encode", ["f2"])]  # fmt: skip
