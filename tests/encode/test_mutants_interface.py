"""The shared behaviour of :class:`chada.encode.interface.Encoder`, on a stub encoder whose features
are computed by hand: channel-count refusals (exact text), grouping of samples by image size with
rows kept in order, the pool map, and what a model / no model answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from chada.encode.interface import Encoder
from chada.errors import InputError


class Stub(Encoder):
    """Pool ``"mean"``: ``[B, 1]`` mean pixel of each image; ``"shape"``: ``[B, 2]`` (channels, height)."""

    def __init__(
        self, module: nn.Module | None = None, info: dict[str, Any] | None = None, **limits: int
    ) -> None:
        self.module = module
        self.info = {"kind": "stub"} if info is None else info
        self.limits = limits
        self.calls: list[tuple[list[int], list[str], Any]] = []

    @property
    def max_channels(self) -> int | None:
        return self.limits.get("max_channels")

    @property
    def exact_channels(self) -> int | None:
        return self.limits.get("exact")

    def encode_batch(self, batch, pools, device=None):  # noqa: ANN001
        counts = [int(c) for c in batch.counts]
        self.calls.append((counts, list(pools), device))
        chunks = torch.split(batch.pixels, counts)
        out = {
            "mean": np.array([[float(c.mean())] for c in chunks], dtype=np.float32),
            "shape": np.array([[c.shape[0], c.shape[1]] for c in chunks], dtype=np.float32),
            "wide": np.zeros((len(counts), 1 + batch.pixels.shape[-1] // 8), dtype=np.float32),
        }
        return {p: out[p] for p in pools}


def sample(image_id: str, channels: int, size: int, value: float) -> dict[str, Any]:
    return {
        "image": torch.full((channels, size, size), value),
        "image_id": image_id,
        "dataset": "d",
        "channel_names": [f"c{i}" for i in range(channels)],
        "label": None,
        "meta": {},
    }


def test_exact_channel_count_refusal_names_each_image_and_the_fix() -> None:
    samples = [sample("a", 3, 4, 0.0), sample("b", 2, 4, 0.0), sample("c", 4, 4, 0.0)]
    with pytest.raises(InputError) as err:
        Stub(exact=3).encode_samples(samples, {"mean": "mean"})
    assert str(err.value) == (
        "image 'b' (2 channels), 'c' (4 channels): this model takes exactly 3 channels per image; "
        "select 3 channels (e.g. by name) or use a channel-adaptive model"
    )
    Stub(exact=3).encode_samples(samples[:1], {"mean": "mean"})  # exactly 3: accepted


def test_channel_limit_refusal_lists_five_images_and_counts_the_rest() -> None:
    samples = [sample(f"i{k}", 3, 4, 0.0) for k in range(7)] + [sample("ok", 2, 4, 0.0)]
    with pytest.raises(InputError) as err:
        Stub(max_channels=2).encode_samples(samples, {"mean": "mean"})
    listed = ", ".join(f"'i{k}' (3 channels)" for k in range(5))
    assert str(err.value) == (
        f"image {listed} and 2 more: more channels than this model's C_max=2; drop channels from the "
        "manifest row or use a model with a larger max_channels"
    )
    with pytest.raises(InputError) as err:  # exactly five: no "and N more"
        Stub(max_channels=2).encode_samples(samples[:5], {"mean": "mean"})
    assert "more:" not in str(err.value) and "'i4' (3 channels):" in str(err.value)
    enc = Stub(max_channels=3)  # at the limit: accepted, no limit at all: accepted
    assert enc.encode_samples(samples, {"mean": "mean"})["mean"].shape == (8, 1)
    assert Stub().encode_samples([sample("x", 9, 4, 0.0)], {"mean": "mean"})["mean"].shape == (1, 1)


def test_samples_are_grouped_by_size_and_rows_keep_their_order() -> None:
    samples = [sample("a", 1, 8, 1.0), sample("b", 2, 4, 2.0), sample("c", 3, 8, 3.0), sample("d", 1, 4, 4.0)]
    enc = Stub()
    out = enc.encode_samples(samples, {"m": "mean", "s": "shape", "m2": "mean"}, device="cpu")
    # one encode_batch per (H, W), in order of first appearance, each with the computed pools sorted once
    assert enc.calls == [([1, 3], ["mean", "shape"], "cpu"), ([2, 1], ["mean", "shape"], "cpu")]
    assert set(out) == {"m", "s", "m2"}
    np.testing.assert_array_equal(out["m"][:, 0], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(out["m2"], out["m"])
    np.testing.assert_array_equal(out["s"], [[1, 8], [2, 4], [3, 8], [1, 4]])
    assert all(v.dtype == np.float32 for v in out.values())


def test_a_pool_whose_width_changes_between_size_groups_is_refused() -> None:
    samples = [sample("a", 1, 8, 0.0), sample("b", 1, 16, 0.0)]
    with pytest.raises(ValueError, match=r"^pool 'wide' gave 3 and 2 features in one batch$"):
        Stub().encode_samples(samples, {"wide": "wide"})


def test_what_a_model_and_no_model_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    none = Stub(info={"kind": "handmade_x"})
    assert not none.is_model and none.precision is None and none.name == "handmade_x"
    none.set_dtype(torch.bfloat16)
    assert none.dtype == torch.float32  # no forward pass to change
    assert none.weights_digest() is None and none.fingerprint() == "handmade_x"
    assert none.to(torch.device("cpu")) is none
    assert Stub(info={}).name == "handmade"

    lin = nn.Linear(2, 2).train()
    model = Stub(module=lin, info={"source": "folder"})
    assert model.is_model and model.name == "Linear" and model.precision == "fp32"
    model.set_dtype(torch.bfloat16)
    assert model.precision == "bf16"
    assert model.to(torch.device("cpu")) is model and not model.module.training
    assert model.weights_digest() is not None and len(model.fingerprint()) == 40
    seeded = Stub(module=nn.Linear(2, 2), info={"source": "random_init"})
    assert seeded.random_init and seeded.weights_digest() is None and not model.random_init

    import chada.encode.budget as budget

    seen: list[tuple] = []
    monkeypatch.setattr(budget, "check_forward", lambda *a: seen.append(a))
    warned: set[str] = set()
    none.check_forward([{}], torch.device("cpu"), "file.csv", warned)
    assert seen == []  # nothing to check without a model
    model.check_forward([{}], torch.device("cpu"), "file.csv", warned)
    assert seen == [(lin, [{}], torch.device("cpu"), "file.csv", warned)]


def test_groups_use_height_and_width_and_six_refusals_count_one_more() -> None:
    # same width, other height: two groups (one batch needs one H x W)
    tall = {**sample("t", 1, 8, 1.0), "image": torch.full((1, 8, 4), 1.0)}
    flat = {**sample("f", 1, 8, 2.0), "image": torch.full((1, 4, 4), 2.0)}
    enc = Stub()
    out = enc.encode_samples([tall, flat], {"s": "shape"})
    assert [c[0] for c in enc.calls] == [[1], [1]]
    np.testing.assert_array_equal(out["s"], [[1, 8], [1, 4]])
    six = [sample(f"i{k}", 3, 4, 0.0) for k in range(6)]
    with pytest.raises(InputError, match=r"'i4' \(3 channels\) and 1 more: more channels"):
        Stub(max_channels=2).encode_samples(six, {"mean": "mean"})


def test_weights_sha1_by_hand() -> None:
    # the SHA-1 of each tensor's name, dtype, shape and raw bytes, in name order (written out here)
    import hashlib

    from chada.encode.inputs import weights_sha1

    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, -2.0]]))
        m.bias.copy_(torch.tensor([0.5]))
    h = hashlib.sha1()
    h.update(b"bias|torch.float32|(1,)|" + np.array([0.5], dtype=np.float32).tobytes())
    h.update(b"weight|torch.float32|(1, 2)|" + np.array([1.0, -2.0], dtype=np.float32).tobytes())
    assert weights_sha1(m) == h.hexdigest()
    empty = nn.Module()
    empty.register_buffer("e", torch.zeros(0))
    assert weights_sha1(empty) == hashlib.sha1(b"e|torch.float32|(0,)|").hexdigest()
    assert Stub(module=m).fingerprint() == h.hexdigest()


def test_a_row_signature_covers_every_channel_file(tmp_path) -> None:  # noqa: ANN001
    # a per-channel row's resume key must change when ANY of its files changes, not only the last
    from chada.encode.inputs import row_signature

    for name in ("a.tif", "b.tif"):
        (tmp_path / name).write_bytes(b"0123")
    row = {"channel_files": "a.tif;b.tif"}
    before = {v: row_signature(row, tmp_path, verify=v) for v in ("stat", "hash")}
    (tmp_path / "a.tif").write_bytes(b"01234567")  # the first file only: new size and content
    after = {v: row_signature(row, tmp_path, verify=v) for v in ("stat", "hash")}
    assert before["stat"] != after["stat"] and before["hash"] != after["hash"]
