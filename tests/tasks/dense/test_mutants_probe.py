"""Saved dense probes and ``chada segment``'s tiling (chada.tasks.dense.probe), and the feature helpers
(chada.tasks.dense.features), on tiny heads and stand-in feature functions with outputs computed here."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import chada.tasks.dense.features as FT
from chada.errors import InputError
from chada.tasks.dense.heads import DenseHead
from chada.tasks.dense.probe import (
    DenseProbe,
    _check_model,
    load_probe,
    order_channels,
    probe_paths,
    segment_image,
)


def _probe(meta: dict | None = None, in_dim: int = 2, kind: str = "linear") -> DenseProbe:
    torch.manual_seed(0)
    head = DenseHead(in_dim, kind, 3)
    with torch.no_grad():
        head.mean.copy_(torch.arange(in_dim) * 0.5)
        head.std.copy_(torch.arange(in_dim) + 1.0)
    return DenseProbe(head.eval(), dict(meta or {}))


def test_probe_paths() -> None:
    want = (Path("a/p.safetensors"), Path("a/p.json"))
    assert probe_paths("a/p") == probe_paths("a/p.json") == probe_paths(Path("a/p.safetensors")) == want
    assert probe_paths("a/p.v1") == (Path("a/p.v1.safetensors"), Path("a/p.v1.json"))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    probe = _probe(
        {"channel_names": ["DNA", "RNA"], "tile": 8, "features": "handmade", "when": Path("x")}, kind="mlp"
    )
    st, js = probe.save(tmp_path / "deep" / "p")
    assert (st, js) == (tmp_path / "deep" / "p.safetensors", tmp_path / "deep" / "p.json")
    meta = json.loads(js.read_text())
    assert meta == {"format": "chada-dense-probe/1", "head": "mlp", "in_dim": 2, "hidden": 3,
                    "channel_names": ["DNA", "RNA"], "tile": 8, "features": "handmade", "when": "x"}  # fmt: skip
    assert js.read_text().startswith('{\n "format"')  # indent 1
    for path in (tmp_path / "deep" / "p", js, st):
        back = load_probe(path)
        assert back.meta == {"channel_names": ["DNA", "RNA"], "tile": 8, "features": "handmade", "when": "x"}
        assert back.channel_names == ["DNA", "RNA"] and not back.head.training
        assert (back.head.kind, back.head.hidden) == ("mlp", 3)
        for k, v in probe.head.state_dict().items():
            torch.testing.assert_close(back.head.state_dict()[k], v)
    assert DenseProbe(probe.head).channel_names == []
    # a description without hidden: the default 64
    meta.pop("hidden")
    js.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="the weights do not fit"):
        load_probe(js)
    lin = _probe(kind="linear", in_dim=2)
    st, js = lin.save(tmp_path / "lin")
    meta = json.loads(js.read_text())
    meta.pop("hidden")
    js.write_text(json.dumps(meta))
    assert load_probe(js).head.hidden == 64


def test_load_refusals(tmp_path: Path) -> None:
    stem = tmp_path / "p"
    with pytest.raises(FileNotFoundError) as info:
        load_probe(stem)
    assert (
        str(info.value) == f"probe file {stem}.json does not exist (a probe is STEM.json + STEM.safetensors)"
    )
    st, js = _probe().save(stem)
    st.unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_probe(stem)
    assert str(info.value) == f"probe file {st} does not exist (a probe is STEM.json + STEM.safetensors)"
    st, js = _probe().save(stem)
    good = js.read_text()
    js.write_text("{not json")
    with pytest.raises(InputError, match=rf"^{js}: not a probe description \(invalid JSON: Expecting"):
        load_probe(stem)
    for text, fmt in (('{"format": "other"}', "'other'"), ("[1, 2]", "None"), ("{}", "None")):
        js.write_text(text)
        with pytest.raises(InputError) as info:
            load_probe(stem)
        assert str(info.value) == f"{js}: not a chada dense probe (format {fmt})"
    js.write_text(good)
    st.write_bytes(b"garbage")
    with pytest.raises(InputError, match=rf"^{st}: cannot read the probe's weights \("):
        load_probe(stem)
    _probe().save(stem)
    js.write_text(json.dumps(json.loads(good) | {"in_dim": 3}))
    with pytest.raises(InputError) as info:
        load_probe(stem)
    assert str(info.value).startswith(f"{st}: the weights do not fit {js} (Error(s) in loading state_dict")
    assert "\n" not in str(info.value)
    js.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "in_dim"}))
    with pytest.raises(InputError) as info:
        load_probe(stem)
    assert str(info.value) == f"{st}: the weights do not fit {js} ('in_dim')"


def test_check_model_messages() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    fp_a = FT.fingerprint(a)
    _check_model(_probe({"features": "handmade"}), None, "m")
    _check_model(_probe({"features": "vit", "fingerprint": fp_a}), a, "m")
    with pytest.raises(InputError) as info:
        _check_model(_probe({"features": "handmade"}), a, "runs/x")
    assert (
        str(info.value)
        == "the probe was trained on hand-made pixel features; use --model handmade, not runs/x"
    )
    with pytest.raises(InputError) as info:
        _check_model(_probe({"features": "vit", "model": "runs/q"}), None, "handmade")
    assert str(info.value) == "the probe was trained on model 'runs/q'; --model handmade does not fit it"
    with pytest.raises(InputError) as info:
        _check_model(
            _probe({"features": "vit", "model": "runs/q", "arch": "chada_vit", "fingerprint": fp_a}), b, "m2"
        )
    fp_b = FT.fingerprint(b)
    assert str(info.value) == (f"model m2 is not the model the probe was trained on ('runs/q', chada_vit): its weights "
                               f"differ (SHA-1 {fp_b[:12]} vs {fp_a[:12]})")  # fmt: skip


def test_order_channels() -> None:
    p = _probe({"channel_names": ["DNA", "RNA"]})
    assert order_channels(p, None, 2) == [0, 1]
    assert order_channels(p, [" rna ", "dna"], 2) == [1, 0]
    assert order_channels(p, ["DNA", "RNA"], 2) == [0, 1]
    for names, n, message in (
        (None, 3, "the image has 3 channel(s) but the probe was trained on 2 (DNA, RNA)"),
        (["a"], 2, "1 channel names (a) for an image with 2 channels"),
        (["dna", "DNA "], 2, "a channel name appears twice in ['dna', 'DNA ']"),
        (
            ["dna", "er"],
            2,
            "the probe needs channels ['DNA', 'RNA']; ['RNA'] not among --channel-names ['dna', 'er']",
        ),
    ):
        with pytest.raises(InputError) as info:
            order_channels(p, names, n)
        assert str(info.value) == message


def _mean_maps(tiles, *a, **k):
    """Stand-in features: each channel's tile mean everywhere (so the padding shows in the output)."""
    return np.broadcast_to(tiles.mean((2, 3), keepdims=True), tiles.shape).astype(np.float32)


def _expected(probe: DenseProbe, x: np.ndarray, tile: int, mode: str) -> np.ndarray:
    c, h, w = x.shape
    ph, pw = -h % tile, -w % tile
    xp = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)
    out = np.zeros(xp.shape[1:], np.float32)
    wt = probe.head.net.weight.detach().numpy()[0]
    b = float(probe.head.net.bias)
    mean, std = probe.head.mean.numpy(), probe.head.std.numpy()
    for y in range(0, h + ph, tile):
        for xx in range(0, w + pw, tile):
            f = xp[:, y : y + tile, xx : xx + tile].mean((1, 2))
            out[y : y + tile, xx : xx + tile] = 1 / (1 + np.exp(-(((f - mean) / std) @ wt + b)))
    return out[:h, :w]


@pytest.mark.parametrize(
    "shape,mode", [((2, 11, 13), "reflect"), ((2, 3, 12), "edge"), ((2, 8, 16), "reflect")]
)
def test_segment_image_tiles_pads_and_stitches(shape, mode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FT, "handmade_maps", _mean_maps)
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    probe = _probe({"features": "handmade", "tile": 8, "normalize": "none"})
    out = segment_image(probe, None, x)
    assert out.shape == shape[1:] and out.dtype == np.float32
    np.testing.assert_allclose(out, _expected(probe, x, 8, mode), rtol=1e-5)


def test_segment_image_normalises_by_default_and_passes_model_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chada.data.normalize import normalize_channels

    seen = []
    monkeypatch.setattr(FT, "handmade_maps", lambda t, s, ts: seen.append((s, ts)) or _mean_maps(t))
    x = (np.random.default_rng(1).random((2, 8, 8)) * 50).astype(np.float32)
    probe = _probe({"features": "handmade", "tile": 8, "sigmas": [1.0], "tensor_sigmas": [2.0]})
    out = segment_image(probe, None, x)
    np.testing.assert_allclose(
        out, _expected(probe, normalize_channels(x, "percentile"), 8, "reflect"), rtol=1e-5
    )
    assert seen == [([1.0], [2.0])]
    torch.manual_seed(0)
    module = nn.Linear(2, 2)
    calls = []

    def model_maps(module_, tiles, names, **kw):
        calls.append((module_, names, kw))
        return _mean_maps(tiles)

    monkeypatch.setattr(FT, "model_maps", model_maps)
    vit = _probe({"features": "vit", "tile": 8, "fingerprint": FT.fingerprint(module), "channel_names": ["a", "b"],
                  "image_size": 16})  # fmt: skip
    segment_image(vit, module, x, dtype=torch.bfloat16)
    assert calls == [(module, ["a", "b"], {"image_size": 16, "channels": "each", "dtype": torch.bfloat16})]
    calls.clear()
    vit.meta["channels"] = "pooled"
    segment_image(vit, module, x)
    assert calls[0][2] == {"image_size": 16, "channels": "pooled", "dtype": torch.float32}
    with pytest.raises(InputError) as info:
        segment_image(_probe({"features": "handmade", "tile": 8}, in_dim=3), None, x)
    assert str(info.value) == "the features have 2 dimensions but the probe takes 3"
    with pytest.raises(InputError, match="use --model handmade, not runs/m"):
        segment_image(_probe({"features": "handmade", "tile": 8}), module, x, model_label="runs/m")


def test_fingerprint_and_patch_size() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    h = __import__("hashlib").sha1()
    for name, t in sorted(a.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    assert FT.fingerprint(a) == h.hexdigest()
    empty = nn.Module()
    empty.register_buffer("e", torch.zeros(0))
    assert FT.fingerprint(empty) == __import__("hashlib").sha1(b"e|torch.float32|(0,)|").hexdigest()
    assert FT.patch_size(SimpleNamespace(config=SimpleNamespace(patch_size=8))) == 8
    for bad in (SimpleNamespace(), SimpleNamespace(config=SimpleNamespace(patch_size=8.0))):
        with pytest.raises(ValueError) as info:
            FT.patch_size(bad)
        assert str(info.value) == "SimpleNamespace has no config.patch_size; a dense task needs a ViT"
