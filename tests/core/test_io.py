"""chada.io: atomic writes leave the old file or the new one, never half a file or a stray temp file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from chada import io as cio


def test_round_trips(tmp_path):
    cio.atomic_write_json(tmp_path / "a" / "x.json", {"b": [1, 2]}, indent=2, newline=True)
    assert (tmp_path / "a" / "x.json").read_text() == json.dumps({"b": [1, 2]}, indent=2) + "\n"
    cio.atomic_write_text(tmp_path / "t.md", "µm")
    assert (tmp_path / "t.md").read_bytes() == "µm".encode()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    cio.atomic_write_npz(tmp_path / "f.npz", feat_cls=x, names=np.array("a"))
    with np.load(tmp_path / "f.npz") as z:
        np.testing.assert_array_equal(z["feat_cls"], x)
        assert str(z["names"]) == "a"
    cio.atomic_write_npy(tmp_path / "f.npy", x)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), x)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)  # what atomic_writer renames with
    with pytest.raises(OSError, match="disk full"):
        cio.atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]  # the temporary file is gone too


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        cio.atomic_write_bytes(tmp_path / "a.bin", b"x")
        cio.atomic_write_npz(tmp_path / "a.npz", x=np.zeros(2))
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "a.npz").stat().st_mode & 0o777 == 0o640
        os.umask(0o002)
        cio.atomic_write_text(tmp_path / "a.bin", "y")  # replacing a file: the new mode, not mkstemp's 0600
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def test_npz_is_streamed_not_copied_in_memory(tmp_path, monkeypatch):
    # the archive goes straight into the temporary file: no BytesIO holding a second copy
    import io as _io

    class NoBuffer(_io.BytesIO):
        def __init__(self, *a, **k):
            raise AssertionError("atomic_write_npz built the archive in memory")

    monkeypatch.setattr(_io, "BytesIO", NoBuffer)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    cio.atomic_write_npz(tmp_path / "s.npz", feat=x)
    monkeypatch.undo()
    with np.load(tmp_path / "s.npz") as z:
        np.testing.assert_array_equal(z["feat"], x)


_DIE_WRITING = """
import os, signal, sys
import chada.io as cio
with cio.atomic_writer(sys.argv[1]) as fh:
    fh.write(b"half of it")
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temp_file_of_a_killed_write_is_cleaned_at_the_next_start(tmp_path):
    import subprocess
    import sys
    import time

    target = tmp_path / "emb.npz"
    proc = subprocess.run([sys.executable, "-c", _DIE_WRITING, str(target)], timeout=60)
    assert proc.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".emb.npz.") and left[0].endswith(".tmp")
    assert cio.temp_owner(left[0])[0] == "emb.npz" and not target.exists()

    # beside it: a live process's temp of the same target, another target's stale temp, an old-style
    # name, and a stale temp written after this "job" started
    os.utime(tmp_path / left[0], (time.time() - 5, time.time() - 5))
    live = tmp_path / f".emb.npz.{os.getpid()}.abcd1234.tmp"
    other = tmp_path / f".other.npz.{cio.temp_owner(left[0])[1]}.abcd1234.tmp"
    legacy = tmp_path / ".emb.npz.k2j4h5g6.tmp"
    for p in (live, other, legacy):
        p.write_bytes(b"x")
        os.utime(p, (time.time() - 5, time.time() - 5))
    assert cio.check_writable_file(target) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])

    # an output folder: every target's stale temp, a few levels down too
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    deep = sub / other.name
    deep.write_bytes(b"x")
    os.utime(deep, (time.time() - 5, time.time() - 5))
    started = time.time()
    fresh = sub / f".late.npz.{cio.temp_owner(left[0])[1]}.zzzz9999.tmp"
    fresh.write_bytes(b"x")
    os.utime(fresh, (started + 60, started + 60))  # modified after the job started: left alone
    cio.check_writable_dir(tmp_path)
    assert not other.exists() and not deep.exists() and live.exists() and fresh.exists()


def test_chunk_store_cleans_its_stale_temps(tmp_path):
    import time

    from chada.encode.chunks import ChunkStore

    store = ChunkStore(tmp_path / "e.npz", {"a": 1})
    stale = store.dir / ".chunk_000003.npz.999999999.abcd1234.tmp"  # a pid far above pid_max: dead
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 5, time.time() - 5))
    ChunkStore(tmp_path / "e.npz", {"a": 1})
    assert not stale.exists()


def test_temp_owner_parses_names():
    assert cio.temp_owner(".x.npz.123.abcd_123.tmp") == ("x.npz", 123)
    assert cio.temp_owner(".x.npz.abcd_123.tmp") == ("x.npz", None)
    assert cio.temp_owner("x.npz") is None and cio.temp_owner(".hidden") is None


def test_safe_filename_keeps_only_portable_characters():
    assert cio.safe_filename("dsb2018_nuclei-v1.2") == "dsb2018_nuclei-v1.2"
    assert cio.safe_filename("a/b c:d*é") == "a_b_c_d_é"  # str.isalnum keeps letters of any script


def test_save_figure_writes_png_and_svg_or_only_the_formats_asked(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chada.viz.style import save_figure

    both = save_figure(plt.figure(), tmp_path / "a.png")
    assert [p.name for p in both] == ["a.png", "a.svg"] and all(p.stat().st_size > 0 for p in both)
    only = save_figure(plt.figure(), tmp_path / "b.png", formats=("png",))
    assert only == [tmp_path / "b.png"] and not (tmp_path / "b.svg").exists()
    assert only[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
