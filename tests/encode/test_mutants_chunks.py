"""The chunk store (chada.encode.chunks) called directly: the content digest written out by hand, the
fingerprint file's layout, where the folder may be, the default resume, pickled arrays refused, and an
empty run's tables (issue 26 item 10, the survivors of the first mutation run of ``encode/chunks.py``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from chada.encode.chunks import ChunkStore


def test_the_stored_digest_is_sha256_of_int64_rows_and_newline_joined_signatures(tmp_path):
    """The digest is part of the chunk file's format (a chunk written by one version is checked by the
    next): SHA-256 over the rows as int64 bytes, the signatures joined by newlines, the names' JSON,
    then each pool as ``|name|dtype|shape|`` and its bytes. Rows given as int32 still hash as int64."""
    s = ChunkStore(tmp_path / "e.npz", {"m": 1})
    rows = np.array([4, 5], np.int32)
    feats = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    s.save(0, rows, {"cls": feats}, [["A"], ["B"]], ["sig a", "sig b"])
    h = hashlib.sha256()
    h.update(np.array([4, 5], np.int64).tobytes())
    h.update(b"sig a\nsig b")
    h.update(b'[["A"], ["B"]]')
    h.update(b"|cls|<f4|(2, 2)|")
    h.update(feats.tobytes())
    with np.load(s.path(0)) as z:
        assert str(z["digest"]) == h.hexdigest()


def test_fingerprint_file_layout_settings_that_are_not_json_and_a_missing_parent(tmp_path):
    """``fingerprint.json`` is for people too: indented by two spaces; a ``Path`` among the settings is
    written as text; the ``.parts`` folder is made with its missing parents."""
    out = tmp_path / "new" / "deeper" / "e.npz"
    s = ChunkStore(out, {"p": Path("/x/y")})
    assert s.dir == tmp_path / "new" / "deeper" / "e.npz.parts" and s.dir.is_dir()
    fp = hashlib.sha256(b'{"p": "/x/y"}').hexdigest()[:16]
    assert (s.dir / "fingerprint.json").read_text() == (
        '{\n  "fingerprint": "' + fp + '",\n  "settings": {\n    "p": "/x/y"\n  }\n}'
    )


def test_resume_is_the_default_and_other_settings_say_so_in_one_message(tmp_path, caplog):
    out = tmp_path / "e.npz"
    s = ChunkStore(out, {"m": 1})
    s.save(0, np.arange(2), {"cls": np.ones((2, 3))}, [["A"], ["B"]], ["a", "b"])
    assert ChunkStore(out, {"m": 1}).check(0, np.arange(2), ["cls"], ["a", "b"]) == ([["A"], ["B"]], None)
    with caplog.at_level("WARNING", logger="chada.encode.chunks"):
        s = ChunkStore(out, {"m": 2})
    assert caplog.messages == [f"discarding partial results in {s.dir}: they were made with other settings"]
    assert not s.path(0).exists()


def _pickled_chunk(s: ChunkStore) -> None:
    """Chunk 0 as a hand-made file whose arrays are Python objects (pickled by numpy)."""
    obj = np.empty(1, dtype=object)
    obj[0] = {"x": 1}
    np.savez(s.path(0), rows=np.arange(1), inputs=np.array(["a"]), channel_names=obj, digest=np.array("0"),
             feat_cls=obj, obj_field=obj)  # fmt: skip


def test_a_chunk_with_pickled_arrays_is_never_unpickled(tmp_path):
    """A ``.parts`` folder may come from elsewhere: loading a pickle runs code, so every reader refuses
    object arrays (numpy's ValueError), and ``check`` calls such a chunk unreadable."""
    s = ChunkStore(tmp_path / "e.npz", {"m": 1})
    _pickled_chunk(s)
    assert s.check(0, np.arange(1), ["cls"], ["a"]) == (None, "chunk_000000.npz is unreadable (ValueError)")
    with pytest.raises(ValueError, match="allow_pickle"):
        s.read(0, ["cls"])
    with pytest.raises(ValueError, match="allow_pickle"):
        s.read_names(0)
    with pytest.raises(ValueError, match="allow_pickle"):
        s.read_objects(0)


def test_no_cell_at_all_gives_empty_float32_tables_and_remove_twice_is_fine(tmp_path):
    s = ChunkStore(tmp_path / "e.npz", {"m": 1})
    empty = {"cls": np.zeros((0, 0)), "all": np.zeros((0, 0))}
    s.save(0, np.array([0]), empty, [["A"]], ["a"], objects={"field": np.zeros(0, np.int64)})
    out = s.assemble([np.array([0])], ["cls", "all"])
    assert {p: (v.shape, v.dtype) for p, v in out.items()} == {
        "cls": ((0, 0), np.float32),
        "all": ((0, 0), np.float32),
    }
    s.remove()
    assert not s.dir.exists()
    s.remove()  # already gone: nothing to do, no error
    assert list(tmp_path.iterdir()) == []
