"""chada.encode's checks and bookkeeping called directly: the forward budget, the input signatures,
duplicate ids, the chunk store (issue 26 item 10, mutation testing of ``chada.encode``). Every
expected number is computed by hand in the test."""

from __future__ import annotations

import json
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import chada.encode.budget as budget
from chada.encode import inputs
from chada.errors import InputError


# ------------------------------------------------------------------------------------------- budget
def _model(p=4, D=8, heads=2, **kw):
    return SimpleNamespace(config=SimpleNamespace(patch_size=p, embed_dim=D, num_heads=heads, **kw))


def _sample(iid, c, h, w):
    return {"image_id": iid, "image": torch.zeros(c, h, w)}


def test_image_tokens():
    assert budget.image_tokens(3, 8, 12, 4) == 1 + 3 * 2 * 3
    assert budget.image_tokens(1, 7, 7, 4) == 2  # whole patches only


@pytest.mark.parametrize(("h", "w", "what"), [(3, 8, "smaller than one 4x4 patch"), (8, 2, "smaller than one 4x4 patch"),
                                              (8, 10, "not a multiple of the patch size 4"),
                                              (6, 8, "not a multiple of the patch size 4")])  # fmt: skip
def test_patch_errors_name_the_image_and_how_to_resize(h, w, what):
    with pytest.raises(InputError) as e:
        budget.check_forward(
            _model(), [_sample("a", 1, 8, 8), _sample("img7", 2, h, w)], where=lambda i: f"{i}.tif"
        )
    assert str(e.value) == (f"image 'img7' (img7.tif): {h}x{w} px is {what}; resize with --image-size N (a multiple "
                            "of 4, e.g. --image-size 224) or crop the image")  # fmt: skip


def test_no_check_without_a_patch_size_or_samples():
    budget.check_forward(SimpleNamespace(), [_sample("a", 1, 3, 3)])
    budget.check_forward(_model(p=0), [_sample("a", 1, 3, 3)])
    budget.check_forward(SimpleNamespace(config=SimpleNamespace(patch_size=4.0)), [_sample("a", 1, 3, 3)])
    budget.check_forward(_model(), [])


def _need(batch, tokens, D, hidden, cmax, n):
    return batch * tokens * (7 * D + 2 * hidden) * 4 + batch * cmax * n * D * 4


@pytest.mark.parametrize(("extra", "hidden", "cmax"), [({}, 32, 1), ({"mlp_ratio": 2.0}, 16, 1),
                                                       ({"mlp_hidden": 40, "max_channels": 5}, 40, 5),
                                                       ({"mlp_hidden": None, "max_channels": None}, 32, 1)])  # fmt: skip
def test_memory_budget_refuses_exactly_past_the_machine(monkeypatch, extra, hidden, cmax):
    model = _model(D=8, **extra)
    # one size group: 3 images of 8x12 px, the largest has 3 channels -> T = 1 + 3 * 2 * 3 = 19, N = 6 patches
    group = [_sample("a", 1, 8, 12), _sample("big", 3, 8, 12), _sample("c", 2, 8, 12)]
    other = [_sample("small", 1, 4, 4)]  # its own group: 2 tokens
    need = _need(3, 19, 8, hidden, cmax, 6)
    seen = []
    monkeypatch.setattr(budget, "machine_memory", lambda device=None: seen.append(device) or need)
    budget.check_forward(model, group + other, device="meta")
    assert seen == ["meta"]
    monkeypatch.setattr(budget, "machine_memory", lambda device=None: need - 1)
    with pytest.raises(InputError) as e:
        budget.check_forward(model, other + group, where=lambda i: "f.tif")
    from chada.models.memory import gib

    assert str(e.value) == (f"image 'big' (f.tif): 8x12 px with 3 channels is 19 tokens; a batch of 3 needs about "
                            f"{gib(need)} of memory and this machine has {gib(need - 1)}: resize with --image-size 224 "
                            "(or a smaller --batch-size)")  # fmt: skip


def test_long_sequence_warns_once_per_size(monkeypatch):
    monkeypatch.setattr(budget, "LONG_SEQUENCE", 18)
    monkeypatch.setattr(budget, "machine_memory", lambda device=None: 1 << 40)
    warned: set[str] = set()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        budget.check_forward(_model(), [_sample("x", 3, 8, 12), _sample("y", 1, 8, 12)], warned=warned,
                             where=lambda i: "x.tif")  # fmt: skip
        budget.check_forward(_model(), [_sample("z", 3, 8, 12)], warned=warned)
        budget.check_forward(_model(), [_sample("n", 3, 8, 12)], warned=None)  # no set: no warning
        budget.check_forward(_model(), [_sample("q", 2, 8, 12)], warned=set())  # 13 tokens: short
    assert warned == {"8x12"}
    assert [str(x.message) for x in w] == [
        "image 'x' (x.tif): 8x12 px is 19 tokens per image; attention time grows with the square of it: resize with "
        "--image-size 224 unless the native size is the point"
    ]
    monkeypatch.setattr(budget, "LONG_SEQUENCE", 19)  # exactly at the limit: no warning
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        budget.check_forward(_model(), [_sample("x", 3, 8, 12)], warned=set())
    assert w == []


def test_files_of_names_a_rows_files(tmp_path):
    ds = SimpleNamespace(root=tmp_path, _rows=[{"image_id": "a", "channel_files": "a1.tif;a2.tif", "channel_names": "X;Y"},
                                               {"image_id": 7, "file": "seven.tif", "channel_names": "X"}])  # fmt: skip
    where = budget.files_of(ds)
    assert where("a") == f"{tmp_path / 'a1.tif'}, {tmp_path / 'a2.tif'}"
    assert where("7") == str(tmp_path / "seven.tif")
    assert where("nope") == "file unknown"


# ------------------------------------------------------------------------------------------- inputs
def test_signatures_follow_content_path_size_and_mtime(tmp_path):
    f = tmp_path / "a.tif"
    f.write_bytes(b"1234")
    row = {"image_id": "a", "file": "a.tif", "channel_names": "X"}
    s1 = inputs.row_signature(row, tmp_path)
    assert len(s1) == 16 and int(s1, 16) >= 0
    st = os.stat(f)
    f.write_bytes(b"5678")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    assert inputs.row_signature(row, tmp_path) == s1  # stat cannot see it
    h1 = inputs.row_signature(row, tmp_path, "hash")
    f.write_bytes(b"1234")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert inputs.row_signature(row, tmp_path, "hash") != h1  # the hash can
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert inputs.row_signature(row, tmp_path) != s1
    import hashlib

    expected = hashlib.sha256(f"{f}\t4\t{hashlib.sha256(b'1234').hexdigest()}".encode()).hexdigest()[:16]
    assert inputs.row_signature(row, tmp_path, "hash") == expected
    st = os.stat(f)
    assert (
        inputs.row_signature(row, tmp_path)
        == hashlib.sha256(f"{f}\t4\t{st.st_mtime_ns}".encode()).hexdigest()[:16]
    )


def test_signature_of_folders_missing_files_and_bad_rows(tmp_path):
    import hashlib

    def sig(text):
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    z = tmp_path / "img.zarr"
    (z / "b").mkdir(parents=True)
    (z / "a").mkdir()
    (z / "b" / "2").write_bytes(b"xy")
    (z / "a" / "1").write_bytes(b"x")
    (z / "zz").write_bytes(b"")
    row = {"image_id": "z", "file": "img.zarr", "channel_names": "X"}
    files = [z / "zz", z / "a" / "1", z / "b" / "2"]  # top-level files first, then folders in order
    lines = [f"{p}\t{os.stat(p).st_size}\t{os.stat(p).st_mtime_ns}" for p in files]
    assert inputs.row_signature(row, tmp_path) == sig("\n".join(lines))
    (tmp_path / "empty.zarr").mkdir()
    assert inputs.row_signature({**row, "file": "empty.zarr"}, tmp_path) == sig(
        f"{tmp_path / 'empty.zarr'}\tempty folder"
    )
    missing = {**row, "file": "gone.tif"}
    assert inputs.row_signature(missing, tmp_path) == sig(
        f"{tmp_path / 'gone.tif'}\tunreadable:FileNotFoundError"
    )
    assert inputs.row_signature(missing, tmp_path, "hash") == sig(
        f"{tmp_path / 'gone.tif'}\tunreadable:FileNotFoundError"
    )
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert inputs.row_signature({**row, "file": "pipe"}, tmp_path, "hash") == sig(
        f"{fifo}\tnot-a-regular-file"
    )
    bad = {"image_id": "q", "channel_names": "X"}
    from chada.data.manifest import row_paths

    with pytest.raises(ValueError) as e:
        row_paths(bad, tmp_path)
    assert inputs.row_signature(bad, tmp_path) == sig(f"invalid:{e.value}")
    with pytest.raises(ValueError, match=r"verify must be one of \('stat', 'hash'\), got 'md5'"):
        inputs.row_signature(row, tmp_path, "md5")
    with pytest.raises(ValueError, match=r"verify must be one of \('stat', 'hash'\), got 'md5'"):
        inputs.row_signatures([row], tmp_path, "md5")


def test_row_signatures_in_order_with_a_bar_only_when_hashing(tmp_path, monkeypatch):
    for n in ("a", "b"):
        (tmp_path / f"{n}.tif").write_bytes(n.encode())
    rows = [{"image_id": n, "file": f"{n}.tif", "channel_names": "X"} for n in ("b", "a")]
    bars = []
    import tqdm.auto

    class Bar(list):
        def __init__(self, it, **kw):
            bars.append(kw)
            super().__init__(it)

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    got = inputs.row_signatures(rows, tmp_path, "hash", progress=True)
    assert got == [inputs.row_signature(r, tmp_path, "hash") for r in rows]
    assert bars == [{"desc": "hashing input files", "unit": "img"}]
    assert inputs.row_signatures(rows, tmp_path, "stat", progress=True) == [
        inputs.row_signature(r, tmp_path) for r in rows
    ]
    inputs.row_signatures(rows, tmp_path, "hash")
    assert len(bars) == 1


def test_duplicate_ids_are_named_with_their_rows(tmp_path):
    frame = pd.DataFrame({"image_id": ["a", "b", "a", "c", "b", "a"]})
    inputs.refuse_duplicate_ids(pd.DataFrame({"image_id": ["a", "b"]}), frame)
    with pytest.raises(InputError) as e:
        inputs.refuse_duplicate_ids(frame, frame)
    assert str(e.value) == ("duplicate image ids in the manifest: 'a' on rows 1, 3, 6; 'b' on rows 2, 5. Every image "
                            "needs its own image_id (`chada data check` lists every problem)")  # fmt: skip
    many = pd.DataFrame({"image_id": [str(i) for i in range(7)] * 2, "dataset": "d", "channel_names": "X",
                         "file": "f.tif"})  # fmt: skip
    path = tmp_path / "m.csv"
    many.to_csv(path, index=False)
    with pytest.raises(InputError) as e:
        inputs.refuse_duplicate_ids(many, path)
    msg = str(e.value)
    assert msg.startswith(f"duplicate image ids in {path}: '0' on rows 1, 8; '1' on rows 2, 9; ")
    assert "'4' on rows 5, 12 and 2 more ids. Every image" in msg and "'5'" not in msg
    five = many[many.image_id.isin(list("01234"))]
    with pytest.raises(InputError) as e:
        inputs.refuse_duplicate_ids(five, five)
    assert "more ids" not in str(e.value)


def test_weights_digest_covers_names_dtypes_shapes_and_bytes():
    import hashlib

    m = torch.nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 2.0]]))
        m.bias.zero_()
    h = hashlib.sha256()
    h.update(b"weight|torch.float32|(1, 2)|")
    h.update(np.array([1.0, 2.0], np.float32).tobytes())
    h.update(b"bias|torch.float32|(1,)|")
    h.update(np.zeros(1, np.float32).tobytes())
    assert inputs.weights_digest(m) == h.hexdigest()
    empty = torch.nn.Module()
    empty.register_buffer("e", torch.zeros(0))
    assert inputs.weights_digest(empty) == hashlib.sha256(b"e|torch.float32|(0,)|").hexdigest()


# ------------------------------------------------------------------------------------------- chunks
def test_fingerprint_is_a_short_hash_of_sorted_settings():
    import hashlib

    from chada.encode.chunks import fingerprint

    assert fingerprint({"b": 1, "a": "x"}) == hashlib.sha256(b'{"a": "x", "b": 1}').hexdigest()[:16]
    assert fingerprint({"p": __import__("pathlib").Path("/x")}) == fingerprint({"p": "/x"})


def _store(tmp_path, settings=None, resume=True):
    from chada.encode.chunks import ChunkStore

    return ChunkStore(tmp_path / "e.npz", settings or {"m": 1}, resume=resume)


def test_chunk_store_keeps_matching_parts_and_discards_others(tmp_path, caplog):
    s = _store(tmp_path)
    assert s.dir == tmp_path / "e.npz.parts"
    fp = json.loads((s.dir / "fingerprint.json").read_text())
    assert fp["settings"] == {"m": 1} and len(fp["fingerprint"]) == 16
    s.save(0, np.arange(2), {"cls": np.ones((2, 3))}, [["A"], ["B"]], ["s0", "s1"])
    stale = s.dir / ".chunk_000001.npz.abcd1234.tmp"  # a killed run's temp file (no live owner)
    stale.write_bytes(b"half")
    os.utime(stale, (1e9, 1e9))
    s = _store(tmp_path)  # same settings: kept, stale temp files gone
    assert s.path(0).exists() and not stale.exists()
    assert s.path(12) == s.dir / "chunk_000012.npz"
    with caplog.at_level("WARNING"):
        s = _store(tmp_path, {"m": 2})
    assert not s.path(0).exists()
    assert f"discarding partial results in {s.dir}: they were made with other settings" in caplog.text
    s.save(0, np.arange(2), {"cls": np.ones((2, 3))}, [["A"], ["B"]], ["s0", "s1"])
    caplog.clear()
    with caplog.at_level("WARNING"):
        s = _store(tmp_path, {"m": 2}, resume=False)  # asked: no message
    assert not s.path(0).exists() and caplog.text == ""
    s.save(0, np.arange(2), {"cls": np.ones((2, 3))}, [["A"], ["B"]], ["s0", "s1"])
    (s.dir / "fingerprint.json").write_text("[1]")  # not a dict: treated as unknown settings
    assert not _store(tmp_path, {"m": 2}).path(0).exists()
    s.remove()
    assert not s.dir.exists()


def test_chunk_check_reasons(tmp_path):
    s = _store(tmp_path)
    rows = np.array([4, 5])
    assert s.check(0, rows, ["cls"], ["a", "b"]) == (None, None)
    s.save(0, rows, {"cls": np.ones((2, 3), np.float64)}, [["A"], ["B", "C"]], ["a", "b"])
    assert s.check(0, rows, ["cls"], ["a", "b"]) == ([["A"], ["B", "C"]], None)
    assert s.read(0, ["cls"])["cls"].dtype == np.float32
    assert s.check(0, np.array([4, 6]), ["cls"], ["a", "b"]) == (None, "chunk_000000.npz holds other rows")
    assert s.check(0, rows, ["cls"], ["a", "x"]) == (None, "changed:1")
    assert s.check(0, rows, ["cls"], ["y", "x"]) == (None, "changed:0,1")
    assert s.check(0, rows, ["all"], ["a", "b"]) == (None, "chunk_000000.npz is unreadable (KeyError)")
    s.path(1).write_bytes(b"garbage")
    assert s.check(1, rows, ["cls"], ["a", "b"]) == (None, "chunk_000001.npz is unreadable (ValueError)")
    with np.load(s.path(0)) as z:
        parts = dict(z)
    parts["feat_cls"] = parts["feat_cls"] + 1  # edited by hand
    np.savez(s.path(0), **parts)
    assert s.check(0, rows, ["cls"], ["a", "b"]) == (
        None,
        "chunk_000000.npz does not match its content digest (damaged or edited)",
    )
    s.save(0, rows, {"cls": np.ones((3, 3))}, [["A"], ["B"]], ["a", "b"])  # 3 features for 2 rows
    assert s.check(0, rows, ["cls"], ["a", "b"])[1].endswith(
        "does not match its content digest (damaged or edited)"
    )
    s.save(0, rows, {"cls": np.ones(2)}, [["A"], ["B"]], ["a", "b"])  # 1-D
    assert s.check(0, rows, ["cls"], ["a", "b"])[1].endswith(
        "does not match its content digest (damaged or edited)"
    )
    s.save(0, rows, {"cls": np.ones((2, 3))}, [["A"]], ["a", "b"])  # names of one row
    assert s.check(0, rows, ["cls"], ["a", "b"])[1].endswith(
        "does not match its content digest (damaged or edited)"
    )
    s.save(0, rows, {"cls": np.ones((2, 3))}, [["A"], ["B"]], ["a"])  # one signature for two rows
    assert s.check(0, rows, ["cls"], ["a", "b"]) == (None, "changed:")


def test_chunks_of_cells_count_and_check_their_cells(tmp_path):
    s = _store(tmp_path)
    rows = np.array([0, 1])
    objects = {"field": np.array([0, 0, 1]), "object_id": np.array([1, 2, 1])}
    s.save(0, rows, {"cls": np.ones((3, 2))}, [["A"], ["A"]], ["a", "b"], objects=objects)
    assert s.check(0, rows, ["cls"], ["a", "b"]) == ([["A"], ["A"]], None)
    assert s.count(0, rows) == 3 and s.read_objects(0)["object_id"].tolist() == [1, 2, 1]
    s.save(1, np.array([2]), {"cls": np.zeros((1, 2))}, [["A"]], ["c"])
    assert s.count(1, np.array([2])) == 1 and s.read_objects(1) is None
    with np.load(s.path(0)) as z:
        parts = dict(z)
    parts["obj_object_id"] = np.array([1, 2, 3])
    np.savez(s.path(0), **parts)
    assert s.check(0, rows, ["cls"], ["a", "b"])[1].endswith(
        "does not match its content digest (damaged or edited)"
    )


def test_assemble_in_order_skips_empty_chunks_and_refuses_other_widths(tmp_path):
    s = _store(tmp_path)
    s.save(0, np.array([0]), {"cls": [[1.0, 2.0]], "all": [[5.0]]}, [["A"]], ["a"])
    s.save(1, np.array([1, 2]), {"cls": np.zeros((0, 0)), "all": np.zeros((0, 0))}, [["A"], ["A"]], ["b", "c"],
           objects={"field": np.zeros(0, np.int64)})  # fmt: skip
    s.save(
        2,
        np.array([3, 4]),
        {"cls": [[3.0, 4.0], [5.0, 6.0]], "all": [[6.0], [7.0]]},
        [["A"], ["A"]],
        ["d", "e"],
    )
    out = s.assemble([np.array([0]), np.array([1, 2]), np.array([3, 4])], ["cls", "all"])
    assert out["cls"].tolist() == [[1, 2], [3, 4], [5, 6]] and out["all"].tolist() == [[5], [6], [7]]
    assert out["cls"].dtype == np.float32
    part = s.assemble({2: np.array([3, 4]), 0: np.array([0])}, ["cls"])
    assert part["cls"].tolist() == [[3, 4], [5, 6], [1, 2]]  # the dict's order
    only_empty = s.assemble({1: np.array([1, 2])}, ["cls", "all"])
    assert {k: v.shape for k, v in only_empty.items()} == {"cls": (0, 0), "all": (0, 0)}
    s.save(3, np.array([5]), {"cls": [[1.0, 2.0, 3.0]]}, [["A"]], ["f"])
    with pytest.raises(ValueError) as e:
        s.assemble([np.array([0]), np.array([1, 2]), np.array([3, 4]), np.array([5])], ["cls"])
    assert str(e.value) == ("pool 'cls': chunks have different feature sizes (2 and 3); re-run with resume=False "
                            "(--no-resume)")  # fmt: skip


# ------------------------------------------------------------------------------- handmade, assemble
def test_features_for_manifest_is_embed_manifest_with_the_kinds_encoder(monkeypatch):
    from chada.encode import handmade
    from chada.encode.options import ImageOptions, OutputOptions, RunOptions

    seen = {}
    monkeypatch.setattr(
        handmade,
        "embed_manifest",
        lambda enc, m, out, pools, **kw: seen.update(enc=enc, m=m, out=out, pools=pools, **kw) or "E",
    )
    assert handmade.features_for_manifest("m.csv", "shortcut", "o.npz") == "E"
    enc = seen.pop("enc")
    assert (enc.kind, enc.layout) == ("shortcut", "pooled")
    assert {k: seen[k] for k in ("m", "out", "pools")} == {
        "m": "m.csv",
        "out": "o.npz",
        "pools": ("cls", "all"),
    }
    # chada features' defaults: native sizes, 64 images per pass, 4 passes per resumable chunk
    assert seen["image"].size is None and seen["run"].batch_size == 64 and seen["output"].chunk_batches == 4
    image, run, output = ImageOptions(size=48), RunOptions(batch_size=8), OutputOptions(chunk_batches=2)
    handmade.features_for_manifest(
        "m.csv", "handmade", "o.npz", layout="per_channel", image=image, run=run, output=output
    )
    assert (seen["enc"].kind, seen["enc"].layout) == ("handmade", "per_channel")
    assert seen["image"] is image and seen["run"] is run and seen["output"] is output


def test_arrow_schema_of_the_whole_manifest():
    import pyarrow as pa

    from chada.encode.assemble import _arrow_schema

    frame = pd.DataFrame({"image_id": pd.array(["a", None], dtype="string"), "n": [1, 2],
                          "empty": pd.array([None, None], dtype="string")})  # fmt: skip
    schema = _arrow_schema(frame)
    assert schema.names == ["image_id", "n", "empty"]
    assert schema.field("image_id").type == pa.string() and schema.field("n").type == pa.int64()
    assert schema.field("empty").type == pa.null()  # no value anywhere: null, as arrow infers it
    assert frame["image_id"].dtype == "string"  # the manifest itself is untouched
    assert _arrow_schema(pd.DataFrame({"mixed": [1, "a"]})) is None


def test_options_accept_their_smallest_values_and_the_policy_reads_the_model():
    """1-px images and batches of one are valid (the bounds are ``>= 1``); the channel policy takes the
    slot limit from the model it is given (``max_channels``) and the names from ``order``."""
    from chada.encode.options import ChannelOptions, ImageOptions, RunOptions

    assert ImageOptions(size=1).size == 1 and RunOptions(batch_size=1).batch_size == 1
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        RunOptions(batch_size=0)
    model = SimpleNamespace(max_channels=5, pretrained_extra={})
    policy = ChannelOptions(order=["DAPI", "Actin"]).policy(model)
    assert policy.max_slots == 5 and ChannelOptions(order=["DAPI"]).policy(None).max_slots is None
