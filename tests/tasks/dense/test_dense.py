"""Dense task: metrics by hand, the train/test tiling, probes on separable masks, Otsu, masked manifests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chada.tasks.dense import (
    IGNORE,
    DenseHead,
    bootstrap_interval,
    confusion_counts,
    fit_head,
    iou_dice,
    object_scores,
    otsu_threshold,
    parse_dense_tasks,
    predict_probabilities,
    run_dense_task,
    split_at_cut,
    tile_bundled_nuclei,
)


def test_iou_dice_by_hand() -> None:
    truth = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, IGNORE]], np.uint8)
    pred = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]], bool)
    # TP 3 (three of the four truth pixels), FP 2 ((1, 2) and (2, 2); (2, 3) is ignored), FN 1, TN 5
    counts = confusion_counts(pred, truth)
    assert counts.tolist() == [[3, 2, 1, 5]]
    iou, dice = iou_dice(counts.sum(0))
    assert iou == pytest.approx(3 / 6) and dice == pytest.approx(6 / 9)
    # pooled over tiles, not averaged: a second tile with a perfect tiny object barely moves it
    tiny = np.zeros((3, 4), np.uint8)
    tiny[0, 0] = 1
    both = confusion_counts(np.stack([pred, tiny.astype(bool)]), np.stack([truth, tiny]))
    assert iou_dice(both.sum(0))[0] == pytest.approx(4 / 7)
    # nothing to find and nothing claimed is a perfect score; claiming something is not
    empty = np.zeros((2, 2), np.uint8)
    assert iou_dice(confusion_counts(np.zeros((2, 2), bool), empty).sum(0))[0] == 1.0
    assert iou_dice(confusion_counts(np.ones((2, 2), bool), empty).sum(0))[0] == 0.0


def test_bootstrap_interval_brackets_the_score_and_collapses_on_identical_tiles() -> None:
    same = np.tile([[3, 1, 2, 10]], (20, 1))
    lo_hi = bootstrap_interval(same, n_boot=200)
    assert lo_hi["iou"] == pytest.approx((0.5, 0.5)) and lo_hi["dice"] == pytest.approx((6 / 9, 6 / 9))
    # two seeds, every tile alike within a seed: the interval is that of the MEAN over seeds (1 and 1/3)
    seeds = np.stack([np.tile([[4, 0, 0, 10]], (20, 1)), np.tile([[2, 2, 2, 10]], (20, 1))])
    assert bootstrap_interval(seeds, n_boot=100)["iou"] == pytest.approx((2 / 3, 2 / 3))
    rng = np.random.default_rng(0)
    counts = np.stack([rng.integers(0, 50, (40, 4)) for _ in range(3)])  # 3 seeds x 40 tiles
    ci = bootstrap_interval(counts, n_boot=500)
    point = iou_dice(counts.sum(1))[0].mean()
    assert ci["iou"][0] < point < ci["iou"][1]


def test_object_scores_by_hand() -> None:
    inst = np.zeros((20, 20), np.int32)
    inst[2:6, 2:6] = 1  # 16 px
    inst[10:18, 10:18] = 2  # 64 px
    inst[2:6, 6:8] = 3  # touches object 1: its pixels are not object 1's false positives
    pred = np.zeros((20, 20), bool)
    pred[2:6, 2:4] = True  # half of object 1
    pred[2:6, 6:8] = True
    pred[10:18, 10:18] = True
    pred[0, 19] = True  # far from both: outside every object's window
    scored = np.ones((20, 20), bool)
    rows = {r["object"]: r for r in object_scores(pred, inst, np.zeros_like(scored), scored)}
    assert rows[1]["iou"] == pytest.approx(0.5) and rows[2]["iou"] == 1.0
    assert rows[1]["diameter"] == pytest.approx(2 * np.sqrt(16 / np.pi))
    scored[:, 15:] = False  # object 2 is no longer wholly in the scored region
    assert [r["object"] for r in object_scores(pred, inst, np.zeros_like(scored), scored)] == [1, 3]


def test_split_at_cut_ignores_only_objects_on_both_sides() -> None:
    inst = np.zeros((6, 8), np.int32)
    inst[0:2, 1:3] = 1  # left
    inst[3:5, 3:6] = 2  # crosses x = 4
    inst[0:2, 5:7] = 3  # right
    ignore, crossing = split_at_cut(inst, 4, axis=1)
    assert crossing == [2]
    assert ignore.sum() == 6 and ignore[inst == 2].all()


def test_bundled_tiling_keeps_train_and_test_nuclei_apart() -> None:
    data = tile_bundled_nuclei(tile=64)
    src = data.sources[0]
    seen: dict[str, set[int]] = {"train": set(), "test": set()}
    for i in range(len(data.tile_ids)):
        y, x = data.origins[i]
        inst = src.instances[y : y + 64, x : x + 64]
        lab = data.labels[i]
        assert ((lab == 1) == ((inst > 0) & (lab != IGNORE))).all()
        seen[str(data.split[i])] |= set(np.unique(inst[(inst > 0) & (lab != IGNORE)]).tolist())
        assert (x < 256) == (data.split[i] == "train")
    assert seen["train"] and seen["test"] and not seen["train"] & seen["test"]
    assert len(seen["train"] | seen["test"]) == 125 - 5  # the 5 nuclei on the cut are in neither
    assert len(data.positions("train")) == len(data.positions("test")) == 32


def test_probes_learn_separable_masks() -> None:
    rng = np.random.default_rng(0)
    # token resolution: 4 x 4 tokens, one feature says "object here"; masks are the token blocks at 32 px
    tokens = (rng.random((48, 4, 4)) > 0.6).astype(np.float32)
    maps = np.stack([tokens, rng.normal(size=tokens.shape).astype(np.float32)], 1)
    labels = np.kron(tokens, np.ones((8, 8))).astype(np.uint8)
    for kind in ("linear", "mlp"):
        head = fit_head(maps[:32], labels[:32], kind, steps=150, lr=3e-2, seed=0)
        pred = predict_probabilities(head, maps[32:], (32, 32)) > 0.5
        assert iou_dice(confusion_counts(pred, labels[32:]).sum(0))[0] > 0.85, kind
    # pixel resolution (hand-made features): feature = truth + noise
    truth = (rng.random((16, 16, 16)) > 0.5).astype(np.uint8)
    pix = (truth + 0.2 * rng.normal(size=truth.shape)).astype(np.float32)[:, None]
    head = fit_head(pix[:12], truth[:12], "linear", steps=100, lr=3e-2)
    pred = predict_probabilities(head, pix[12:], (16, 16)) > 0.5
    assert iou_dice(confusion_counts(pred, truth[12:]).sum(0))[0] > 0.95


def test_linear_probe_on_tokens_equals_probe_on_upsampled_features() -> None:
    """The reason the heads probe tokens and resize logits: for a linear probe it is the same map."""
    torch.manual_seed(0)
    head = DenseHead(6, "linear").eval()
    head.mean.normal_()
    head.std.uniform_(0.5, 2)
    maps = torch.randn(3, 6, 4, 4)
    up = torch.nn.functional.interpolate(maps, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(head(maps, (32, 32)), head(up), rtol=1e-5, atol=1e-5)


def test_otsu_on_a_two_level_image() -> None:
    img = np.full((64, 64), 0.2)
    fg = np.zeros((64, 64), bool)
    fg[16:40, 20:50] = True
    img[fg] = 0.8
    thr = otsu_threshold(img)
    assert 0.2 <= thr < 0.8 and ((img > thr) == fg).all()
    # with noise the two modes stay apart: at most a pixel or two of the background tail is claimed
    noisy = img + np.random.default_rng(0).normal(0, 0.02, img.shape)
    assert ((noisy > otsu_threshold(noisy)) == fg).mean() > 0.999
    assert otsu_threshold(np.full(10, 0.3)) == 0.3
    # Otsu's criterion by hand: no threshold splits a skewed mixture with more between-class variance
    rng = np.random.default_rng(1)
    v = np.r_[rng.gamma(2.0, 0.05, 3000), 0.5 + rng.gamma(4.0, 0.08, 800)]

    def between(t: float) -> float:
        lo, hi = v[v <= t], v[v > t]
        return len(lo) * len(hi) * (lo.mean() - hi.mean()) ** 2 / len(v) ** 2

    best = max(between(t) for t in np.quantile(v, np.linspace(0.02, 0.98, 400)))
    assert between(otsu_threshold(v)) >= 0.999 * best


def _two_level_manifest(root, n: int = 12):
    import tifffile

    from chada.data.manifest import write_manifest

    rows = []
    rng = np.random.default_rng(1)
    for i in range(n):
        img = np.full((2, 32, 32), 0.1, np.float32) + rng.normal(0, 0.01, (2, 32, 32)).astype(np.float32)
        y, x, s = rng.integers(2, 14), rng.integers(2, 14), rng.integers(6, 16)
        img[1, y : y + s, x : x + s] += 0.6
        mask = np.zeros((32, 32), np.uint8)
        mask[y : y + s, x : x + s] = 1
        tifffile.imwrite(root / f"im{i}.tif", img, photometric="minisblack", metadata={"axes": "CYX"})
        tifffile.imwrite(root / f"im{i}_mask.tif", mask)
        rows.append(dict(image_id=f"im{i}", dataset="toy", file=f"im{i}.tif", channel_names="Other;DAPI",
                         split="train" if i < 8 else "test", mask_file=f"im{i}_mask.tif"))  # fmt: skip
    import pandas as pd

    return write_manifest(pd.DataFrame(rows), root / "manifest.csv")


def test_masked_manifest_task_scores_otsu_pixel_features_and_background(tmp_path) -> None:
    manifest = _two_level_manifest(tmp_path)
    (task,) = parse_dense_tasks(
        [{"name": "toy", "manifest": str(manifest), "models": {"handmade": "handmade"}, "heads": ["linear"],
          "steps": 200, "seeds": [0, 1], "bootstrap": 100}],
    )  # fmt: skip
    out = run_dense_task(task, progress=False)
    t = out.table.set_index("model")
    assert t.loc["otsu", "iou"] == 1.0  # Otsu finds the bright square of the nuclear channel (DAPI, the 2nd)
    assert t.loc["all_background", "iou"] == 0.0 and t.loc["all_background", "dice"] == 0.0
    assert t.loc["handmade", "iou"] > 0.9
    assert t.loc["handmade", "iou_lo"] <= t.loc["handmade", "iou"] <= t.loc["handmade", "iou_hi"]
    rows = [r for r in out.rows if r["model"] == "handmade" and r["metric"] == "dense_iou"]
    assert [r["seed"] for r in rows] == [0, 1] and {r["n_test"] for r in rows} == {4}
    assert set(out.sizes.model) == {"handmade", "otsu", "all_background"}


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "a", "models": {"h": "handmade"}}, "exactly one of source"),
        (
            {"name": "a", "source": "dsb2018", "manifest": "m.csv", "models": {"h": "handmade"}},
            "exactly one of source",
        ),
        ({"name": "a", "source": "dsb2018"}, r"dense\.a\.models: required"),
        (
            {"name": "a", "source": "dsb2018", "models": {"h": "handmade"}, "heads": ["conv"]},
            r"dense\.a\.heads: expected one of 'linear', 'mlp', got 'conv'",
        ),
        (
            {"name": "a", "source": "dsb2018", "models": {"h": "handmade"}, "tiles": 32},
            r"dense\.a\.tiles: unknown key \(did you mean 'tile'\?\)",
        ),
        ({"name": "a", "source": "dsb2018", "models": {"h": {"model": "handmade", "family": "x"}}}, "family"),
    ],
)
def test_config_errors_name_the_task(entry, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_dense_tasks([entry])
