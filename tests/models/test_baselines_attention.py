"""Per-channel CLS attention of the One-Channel ViT (``forward_features(..., return_attention=True)``)
and its use by ``chada.viz.attention`` / ``chada attention --compare``."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

import chada
from chada.cli import main
from chada.models import ChannelBatch
from chada.viz.attention import compute_model_attention
from chada.viz.attention_figure import plot_attention_grid

HEADS, GRID = 2, (4, 4)  # one_channel_vit_test: 2 heads, patch 8 on 32 x 32 images


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = chada.create_model("one_channel_vit_test").eval()
    # Random init gives near-uniform attention (every weight ~ 1/17); sharpen the last layer so that
    # channels really differ and a scatter to the wrong position cannot pass the comparisons.
    with torch.no_grad():
        m.blocks[-1].attn.qkv.weight.mul_(20.0)
    return m


def _images(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.rand(3, 32, 32, generator=g),
        torch.rand(1, 32, 32, generator=g),
        torch.rand(5, 32, 32, generator=g),
    ]


def test_shapes_sums_and_padding(model):
    images = _images()
    out = model.forward_features(images, return_attention=True)
    att, cls_self = out.attention, out.cls_self_attention
    Cmax = model.config.max_channels
    assert att.shape == (3, HEADS, Cmax, *GRID)
    assert cls_self.shape == (3, HEADS, Cmax)
    for b, img in enumerate(images):
        c = img.shape[0]
        # each real channel has its own softmax: its patches + its own CLS sum to 1, per head
        total = att[b, :, :c].sum(dim=(-2, -1)) + cls_self[b, :, :c]
        torch.testing.assert_close(total, torch.ones(HEADS, c), atol=1e-5, rtol=0)
        assert bool((att[b, :, :c] > 0).all()) and bool((cls_self[b, :, :c] > 0).all())
        # padding positions are exactly zero
        assert torch.count_nonzero(att[b, :, c:]) == 0 and torch.count_nonzero(cls_self[b, :, c:]) == 0
    # unlike ChAda-ViT's single softmax, the attention of image b sums to C_b per head
    per_image = att.sum(dim=(2, 3, 4)) + cls_self.sum(-1)
    torch.testing.assert_close(per_image, torch.tensor([[3.0] * HEADS, [1.0] * HEADS, [5.0] * HEADS]))
    # the sharpened last layer gives maps far from uniform and different between channels
    assert float(att[0, :, 0].max()) > 2.0 / 17
    assert float((att[0, :, 0] - att[0, :, 1]).abs().max()) > 1e-2


def test_features_unchanged_and_off_by_default(model):
    images = _images()
    plain = model.forward_features(images)
    assert plain.attention is None and plain.cls_self_attention is None
    withatt = model.forward_features(images, return_attention=True)
    # the last block takes the explicit softmax instead of SDPA: same numbers up to float rounding
    torch.testing.assert_close(withatt.cls, plain.cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(withatt.patch_tokens, plain.patch_tokens, atol=1e-5, rtol=1e-5)
    assert withatt.grid == plain.grid and torch.equal(withatt.counts, plain.counts)
    emb = model.forward(images, pool="mean")
    torch.testing.assert_close(model.forward_head(withatt, pool="mean"), emb, atol=1e-5, rtol=1e-5)


def test_each_channel_independent_of_the_others(model):
    images = _images()
    out = model.forward_features(images, return_attention=True)
    # first, last and middle positions of the 3-, 1- and 5-channel images
    for b, c in [(0, 0), (0, 2), (1, 0), (2, 1), (2, 4)]:
        alone = model.forward_features([images[b][c : c + 1]], return_attention=True)
        torch.testing.assert_close(out.attention[b, :, c], alone.attention[0, :, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            out.cls_self_attention[b, :, c], alone.cls_self_attention[0, :, 0], atol=1e-5, rtol=0
        )
    # other input forms: a [B, C, H, W] tensor and a ChannelBatch (channel_ids are ignored)
    x = torch.stack([images[0], images[0].flip(0)])
    t = model.forward_features(x, return_attention=True).attention
    torch.testing.assert_close(t[0, :, :3], out.attention[0, :, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(t[1, :, :3], out.attention[0, :, :3].flip(1), atol=1e-5, rtol=0)
    cb = ChannelBatch.from_images([images[2]], channel_ids=[[9, 3, 0, 1, 2]])
    torch.testing.assert_close(
        model.forward_features(cb, return_attention=True).attention[0], out.attention[2], atol=1e-5, rtol=0
    )


def test_viz_reads_per_channel_maps(model, tmp_path):
    img = _images()[0]
    res = compute_model_attention(model, img, "one-channel")
    assert res.maps is not None and res.map_note is None
    maps = res.maps
    assert maps["kind"] == "per_channel" and maps["grid"] == GRID
    assert maps["per_head"].shape == (HEADS, 3, 32, 32) and maps["cls_self"].shape == (HEADS, 3)
    torch.testing.assert_close(
        maps["channel_mass_per_head"] + maps["cls_self"], torch.ones(HEADS, 3), atol=1e-5, rtol=0
    )
    direct = model.forward_features([img], return_attention=True).attention[0, :, :3]
    torch.testing.assert_close(maps["patch_attention"], direct)
    # no joint sequence over channels, so no inter-channel matrix: a note, not an error
    assert res.matrix is None and "no inter-channel attention" in res.matrix_note
    paths = plot_attention_grid(
        img, [res], ["DAPI", "Actin", "Tubulin"], tmp_path / "one.png", show_heads=False
    )
    svg = paths[1].read_text()
    assert "one-channel" in svg and "provides no attention maps" not in svg
    assert "each channel encoded alone" in svg and "mean of heads" in svg


def test_attention_cli_compare_draws_one_channel_maps(tmp_path, capsys):
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        p = tmp_path / f"ch{i}.tif"
        tifffile.imwrite(p, (rng.random((32, 32)) * 1000 * (i + 1)).astype(np.uint16))
        files.append(str(p))
    torch.manual_seed(0)
    chada.create_model("chada_vit_test").save_pretrained(tmp_path / "model")
    out = tmp_path / "cmp.png"
    rc = main(
        [
            "attention",
            "--model",
            str(tmp_path / "model"),
            "--compare",
            "one_channel_vit_test",
            "--image",
            *files,
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "provides no attention maps" not in text
    header = text.split("attention mass per channel")[1].splitlines()[1]
    assert "model" in header and "one_channel_vit_te" in header  # both models have a mass column (18 chars)
    self_row = next(line for line in text.splitlines() if line.strip().startswith("CLS self"))
    assert len(self_row.split()) == 4  # "CLS self" + one value per model
    assert out.stat().st_size > 10_000
    svg = (tmp_path / "cmp.svg").read_text()
    assert "one_channel_vit_test" in svg and "provides no attention maps" not in svg
    assert "each channel encoded alone" in svg and "one softmax over all channels" in svg
