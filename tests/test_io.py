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

    monkeypatch.setattr(cio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        cio.atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]  # the temporary file is gone too
