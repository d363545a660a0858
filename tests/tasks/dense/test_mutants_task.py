"""The dense task's runner (chada.tasks.dense.task) on an 8 x 8 image cut into four 4-px tiles, with the
features and the probe replaced by stand-ins whose masks are known: every count, score, row, object
IoU, size bin, baseline, example and probe description is computed here by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import chada.tasks.dense.task as T
from chada.tasks.dense.config import parse_dense_tasks
from chada.tasks.dense.data import DenseData, Source


def _data(n_tiles: int = 4, split=("train", "train", "test", "test")) -> DenseData:
    inst = np.zeros((8, 8), np.int32)
    inst[0:2, 0:2] = 3  # in the train half
    inst[5:7, 1:3] = 1  # test half: area 4
    inst[4:8, 4:8] = 2  # test half: area 16
    pred = np.zeros((8, 8), np.float32)
    pred[5:7, 1:3] = 1.0  # the stand-in probe finds object 1 ...
    pred[4:6, 4:8] = 1.0  # ... and the top half of object 2
    pred[7, 7] = 0.5  # exactly 0.5 is not foreground
    image = np.stack([pred, (inst > 0).astype(np.float32)])  # channels: the probe's answer, DAPI
    origins = [(0, 0), (0, 4), (4, 0), (4, 4)][:n_tiles]
    return DenseData(
        name="toy", images=np.stack([image[:, y : y + 4, x : x + 4] for y, x in origins]),
        labels=np.stack([(inst > 0).astype(np.uint8)[y : y + 4, x : x + 4] for y, x in origins]),
        split=np.array(list(split)[:n_tiles]), tile_ids=[f"t{i}" for i in range(n_tiles)],
        channel_names=["Other", "DAPI"], groups=np.zeros(n_tiles, np.int64), origins=np.array(origins, np.int64),
        sources=[Source("src", inst, np.zeros((8, 8), bool))], mask_name="m", notes=["a note"],
    )  # fmt: skip


def _task(**kw):
    entry = {"name": "toy", "source": "dsb2018", "models": {"vit": "chada_vit_test", "hand": "handmade"},
             "heads": ["linear"], "seeds": [5, 6], "bootstrap": 40, "hidden": 3, "steps": 2, "batch_size": 7,
             "lr": 0.5} | kw  # fmt: skip
    return parse_dense_tasks([entry])[0]


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch):
    """Features = the tiles; the probe of seed s predicts channel 0 for the first seed, nothing after."""
    fits, sizes = [], []
    metas = {"vit": {"features": "vit", "family": "learned", "arch": "v", "patch": 4, "model": "vit"},
             "hand": {"features": "handmade", "family": "handmade", "arch": "pixel_filters", "patch": None}}  # fmt: skip
    monkeypatch.setattr(T, "load_task_data", lambda task: _data())
    tasks = []

    def features(spec, data, task):
        assert task.name == "toy"  # the task itself reaches the features
        tasks.append(task)
        return data.images.copy(), dict(metas[spec.name])

    monkeypatch.setattr(T, "_model_features", features)

    def fit(maps, labels, head, **kw):
        fits.append((len(maps), head, kw, torch.get_num_threads()))
        return kw["seed"]

    def predict(h, maps, size):
        sizes.append(size)
        return maps[:, 0] if h == 5 else np.zeros_like(maps[:, 0])

    monkeypatch.setattr(T, "fit_head", fit)
    monkeypatch.setattr(T, "predict_probabilities", predict)
    return fits, sizes


def test_scores_rows_and_table(stand_ins) -> None:
    fits, sizes = stand_ins
    before = torch.get_num_threads()
    out = T.run_dense_task(_task(), progress=False)
    assert torch.get_num_threads() == before
    assert (
        fits == [(2, "linear", dict(hidden=3, steps=2, batch_size=7, lr=0.5, seed=s), 1) for s in (5, 6)] * 2
    )
    assert sizes == [(4, 4)] * 4
    # seed 5: TP 12 (object 1 and half of object 2), FN 8, FP 0 -> IoU 12/20, Dice 24/32; seed 6: nothing
    rows = pd.DataFrame(out.rows)
    vit = rows[rows.model == "vit"]
    assert vit[["seed", "metric", "value"]].values.tolist() == [
        [5, "dense_iou", 0.6],
        [5, "dense_dice", 0.75],
        [6, "dense_iou", 0.0],
        [6, "dense_dice", 0.0],
    ]
    first = out.rows[0]
    assert first == dict(task="toy", kind="dense", model="vit", family="learned", arch="v", feature="linear",
                         fraction=1.0, seed=5, metric="dense_iou", value=0.6, chance=0.0, n_train=2, n_test=2)  # fmt: skip
    assert out.rows[-1]["model"] == "all_background" and out.rows[-1]["arch"] == "constant"
    t = out.table.set_index("model")
    assert list(out.table.model) == ["vit", "hand", "otsu", "all_background"]
    assert t.loc["vit", "iou"] == pytest.approx(0.3) and t.loc["vit", "dice"] == pytest.approx(0.375)
    assert (t.loc["vit", "n_seeds"], t.loc["vit", "n_test_tiles"], t.loc["otsu", "n_seeds"]) == (2, 2, 1)
    assert (t.loc["otsu", "iou"], t.loc["otsu", "family"], t.loc["all_background", "dice"]) == (
        1.0,
        "chance",
        0.0,
    )
    from chada.tasks.dense.metrics import bootstrap_interval

    counts = np.array(
        [[[4, 0, 0, 12], [8, 0, 8, 0]], [[0, 0, 4, 12], [0, 0, 16, 0]]]
    )  # [S, tiles, 4] by hand
    ci = bootstrap_interval(counts, 40)
    assert (t.loc["vit", "iou_lo"], t.loc["vit", "iou_hi"]) == ci["iou"]
    assert (t.loc["vit", "dice_lo"], t.loc["vit", "dice_hi"]) == ci["dice"]
    assert set(out.comparisons.reference) == {"hand"} and out.comparisons.n.tolist() == [2]
    assert out.comparisons.task.tolist() == ["toy"]
    assert out.table["head"].tolist() == ["linear", "linear", "threshold", "constant"]
    assert out.table.family.tolist() == ["learned", "handmade", "chance", "chance"]
    assert [r["arch"] for r in out.rows if r["seed"] == 5 and r["metric"] == "dense_iou"] == [
        "v",
        "pixel_filters",
        "otsu",
        "constant",
    ]
    # one bootstrap draw: a point, not an interval (the task's count reaches both bootstraps)
    one = T.run_dense_task(_task(bootstrap=1), progress=False)
    t1 = one.table.set_index("model")
    assert (
        t1.loc["vit", "iou_lo"] == t1.loc["vit", "iou_hi"]
        and t1.loc["vit", "dice_lo"] == t1.loc["vit", "dice_hi"]
    )


def test_objects_bins_info_and_probes(stand_ins) -> None:
    out = T.run_dense_task(_task(), progress=False)
    s = out.sizes[out.sizes.model == "vit"]
    assert set(s["head"]) == {"linear"}
    # diameters 2.26 and 4.51 px over 4 px per patch (patch 4, tile 4 = input): bins <1 and 1-2;
    # object IoU over seeds: object 1 (1 + 0) / 2, object 2 (8/16 + 0) / 2
    assert s.bin.astype(str).tolist() == ["<1", "1-2", "2-3", "3-4", ">=4"]
    assert s.n_objects.tolist() == [1, 1, 0, 0, 0]
    assert s.iou.tolist()[:2] == [0.5, 0.25] and s.iou.isna().tolist() == [False, False, True, True, True]
    thr = out.info["otsu"]
    assert 0.0 <= thr < 1.0
    assert out.info == {"notes": ["a note"], "tile": 4, "image_size": 4, "patch": 4, "px_per_patch": 4.0,
                        "n_train_tiles": 2, "n_test_tiles": 2, "mask": "m", "channels": ["Other", "DAPI"],
                        "otsu": thr, "heads": ["linear"], "seeds": [5, 6], "figure_head": "linear"}  # fmt: skip
    assert set(out.probes) == {"vit_linear", "hand_linear"} and out.probes["vit_linear"].head == 5
    assert out.probes["vit_linear"].meta == {"features": "vit", "arch": "v", "model": "vit", "task": "toy",
                                             "model_label": "vit", "mask": "m", "tile": 4,
                                             "channel_names": ["Other", "DAPI"], "normalize": "percentile",
                                             "threshold": 0.5}  # fmt: skip
    assert out.channel_names == ["Other", "DAPI"] and out.task == "toy"
    out = T.run_dense_task(_task(image_size=8, save_probes=False, baselines=["background"]), progress=False)
    assert out.info["px_per_patch"] == 2.0 and out.info["image_size"] == 8 and out.info["otsu"] is None
    assert out.probes == {} and "otsu" not in set(out.table.model)
    s = out.sizes[out.sizes.model == "vit"]
    assert s.n_objects.tolist() == [0, 1, 1, 0, 0]


def test_baselines_and_examples(stand_ins) -> None:
    out = T.run_dense_task(_task(baselines=["otsu"], otsu_channel="other"), progress=False)
    assert "all_background" not in set(out.table.model)
    # Otsu on channel 0 ("Other", by name): all-zero training pixels give threshold 0, so the 0.5 pixel counts
    assert out.table.set_index("model").loc["otsu", "iou"] == pytest.approx(13 / 20)
    [ex] = out.examples
    assert ex.image_id == "src"
    inst = _data().sources[0].instances
    np.testing.assert_array_equal(ex.labels, (inst[4:8, 0:4] > 0).astype(np.uint8))
    np.testing.assert_array_equal(ex.image, np.stack([_data().images[2][c] for c in range(2)]))
    assert list(ex.predictions) == ["vit", "hand", "otsu"]
    np.testing.assert_array_equal(ex.predictions["vit"], _data().images[2][0] > 0.5)
    out = T.run_dense_task(_task(heads=["linear", "mlp"], figure_head="mlp", baselines=[]), progress=False)
    assert list(out.examples[0].predictions) == ["vit", "hand"]


def test_threads_are_set_and_restored(stand_ins) -> None:
    fits, _ = stand_ins
    torch.set_num_threads(2)
    try:
        T.run_dense_task(_task(num_threads=None, seeds=[5]), progress=False)
        assert {f[3] for f in fits} == {2} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_source_image_leaves_uncovered_pixels_at_zero() -> None:
    d = _data(n_tiles=3)
    img = T._source_image(d, 0)
    assert img.shape == (2, 8, 8) and img.dtype == np.float32
    np.testing.assert_array_equal(img[:, 4:8, 4:8], 0)
    np.testing.assert_array_equal(img[:, 4:8, 0:4], d.images[2])


@pytest.mark.parametrize("names,spec,want", [
    (["Other", "Hoechst"], None, 1), (["a", "b"], None, 0), (["DRAQ5", "DAPI"], None, 0), (["a", "b"], 1, 1),
    (["a", "b"], -1, 1), (["a", "b"], "1", 1), (["a", "b"], "-2", 0), (["a", "DNA"], "dna", 1),
])  # fmt: skip
def test_nuclear_channel(names, spec, want) -> None:
    assert T.nuclear_channel(names, spec) == want


@pytest.mark.parametrize("name", ["dapi", "hoechst", "nuclei", "nucleus", "nuclear", "h2b", "draq5", "haematoxylin",
                                  "hematoxylin"])  # fmt: skip
def test_every_nuclear_stain_is_found(name: str) -> None:
    assert T.nuclear_channel(["actin", name.upper()], None) == 1


def test_nuclear_channel_refusals() -> None:
    for spec in (2, -3, "5"):
        with pytest.raises(ValueError) as info:
            T.nuclear_channel(["a", "b"], spec)
        assert str(info.value) == f"otsu_channel {spec} out of range for channels ['a', 'b']"
    with pytest.raises(ValueError) as info:
        T.nuclear_channel(["a", "b"], "x")
    assert str(info.value) == "otsu_channel 'x' is not among the channels ['a', 'b']"


def test_bin_labels() -> None:
    assert T._bin_labels([1.0, 2.0, 3.5]) == ["<1", "1-2", "2-3.5", ">=3.5"]


def test_model_features(monkeypatch: pytest.MonkeyPatch) -> None:
    import chada.encode.encoders as enc

    seen = []
    monkeypatch.setattr(T, "handmade_maps", lambda images: seen.append(("hand", images.shape)) or "H")
    args = {}
    monkeypatch.setattr(T, "model_maps", lambda m, images, names, **kw: args.update(m=m, images=images)
                        or seen.append(("vit", names, kw)) or "V")  # fmt: skip
    task = _task(models={"vit": {"model": "chada_vit_test", "seed": 2, "arch": "my_arch"}, "hand": "handmade"},
                 image_size=8, channels="pooled")  # fmt: skip
    data = _data()
    maps, meta = T._model_features(task.models["hand"], data, task)
    assert maps == "H" and meta == {"features": "handmade", "model": "handmade", "sigmas": None, "tensor_sigmas": None,
                                    "family": "handmade", "arch": "pixel_filters", "patch": None}  # fmt: skip
    maps, meta = T._model_features(task.models["vit"], data, task)
    assert maps == "V" and seen[-1] == ("vit", ["Other", "DAPI"], {"image_size": 8, "channels": "pooled",
                                                                    "dtype": torch.float32})  # fmt: skip
    module, info = enc.resolve_model("chada_vit_test", seed=2)
    assert args["images"] is data.images and T.fingerprint(args["m"]) == T.fingerprint(module)
    assert meta == {"features": "vit", "model": "chada_vit_test", "model_seed": 2, "arch": "my_arch",
                    "model_name": info.get("model_name"), "fingerprint": T.fingerprint(module), "image_size": 8,
                    "channels": "pooled", "precision": "fp32", "patch": module.config.patch_size,
                    "family": "untrained"}  # fmt: skip
    task = _task(models={"vit": {"model": "chada_vit_test", "family": "learned"}})
    assert T._model_features(task.models["vit"], data, task)[1]["arch"] == info["arch"]
    assert T._model_features(task.models["vit"], data, task)[1]["image_size"] == 4
    assert T._model_features(task.models["vit"], data, task)[1]["family"] == "learned"
    monkeypatch.setattr(enc, "resolve_model", lambda model, seed: (torch.nn.Linear(1, 1), {}))
    with pytest.raises(ValueError) as info:
        T._model_features(task.models["vit"], data, task)
    assert str(info.value) == ("dense task 'toy', model 'vit': Linear has no dense output (forward_dense); use "
                               "ChAda-ViT or the One-Channel ViT")  # fmt: skip


def test_load_task_data_passes_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(T, "tile_bundled_nuclei", lambda *a: seen.append(a) or "bundled")
    monkeypatch.setattr(T, "load_masked_manifest", lambda *a, **kw: seen.append((a, kw)) or "manifest")
    assert (
        T.load_task_data(SimpleNamespace(source="dsb2018", tile=16, split_axis="y", normalize="none"))
        == "bundled"
    )
    t = SimpleNamespace(
        source=None, manifest="m.csv", mask="cell", datasets=["d"], max_images=3, normalize="minmax"
    )
    assert T.load_task_data(t) == "manifest"
    assert seen == [
        (16, "y", "none"),
        (("m.csv", "cell"), {"datasets": ["d"], "max_images": 3, "normalize": "minmax"}),
    ]


def test_otsu_leaves_ignored_training_pixels_out(stand_ins, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _data()
    d.labels[0, 3, 3] = 255  # an ignored training pixel ...
    d.images[0, 1, 3, 3] = 100.0  # ... far brighter than any other: it would move the threshold
    monkeypatch.setattr(T, "load_task_data", lambda task: d)
    out = T.run_dense_task(_task(), progress=False)
    assert out.info["otsu"] < 1.0 and out.table.set_index("model").loc["otsu", "iou"] == 1.0


def test_pixel_units_without_patches_and_the_task_reaches_the_features(stand_ins) -> None:
    out = T.run_dense_task(_task(models={"hand": "handmade"}), progress=False)
    assert out.info["px_per_patch"] == 1.0 and out.info["patch"] is None
    s = out.sizes[out.sizes.model == "hand"]
    assert s.n_objects.tolist() == [0, 0, 1, 0, 1]  # diameters 2.26 and 4.51 px


def test_examples_window_and_count(stand_ins, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _data(split=("train", "test", "train", "test"))  # test = the right half: 8 rows x 4 columns
    monkeypatch.setattr(T, "load_task_data", lambda task: d)
    [ex] = T.run_dense_task(_task(), progress=False).examples
    assert ex.labels.shape == (4, 4) and ex.labels.dtype == np.uint8
    np.testing.assert_array_equal(ex.image, T._source_image(d, 0)[:, 0:4, 4:8])
    np.testing.assert_array_equal(ex.labels, (d.sources[0].instances[0:4, 4:8] > 0).astype(np.uint8))
    empty = T._Scores(d, d.positions("test"))
    assert T._examples(_task(), d, empty) == []
    # five source images, one test tile each: three examples, and every source's objects are scored
    many = DenseData(
        name="m", images=np.concatenate([d.images] * 5)[:10], labels=np.concatenate([d.labels] * 5)[:10],
        split=np.array(["train", "test"] * 5), tile_ids=[f"t{i}" for i in range(10)], channel_names=["a", "b"],
        groups=np.repeat(np.arange(5), 2), origins=np.array([[0, 0], [0, 0]] * 5, np.int64),
        sources=[Source(f"s{g}", np.pad(d.labels[3].astype(np.int32), ((0, 4), (0, 4))), np.zeros((8, 8), bool))
                 for g in range(5)],
    )  # fmt: skip
    monkeypatch.setattr(T, "load_task_data", lambda task: many)
    out = T.run_dense_task(_task(baselines=[]), progress=False)
    assert [e.image_id for e in out.examples] == ["s0", "s1", "s2"]
    assert out.sizes[out.sizes.model == "vit"].n_objects.sum() == 5


def test_a_spec_that_looks_like_a_prefixed_number_is_a_name() -> None:
    assert T.nuclear_channel(["a", "X1"], "X1") == 1


def test_otsu_threshold_and_comparisons_follow_the_task(stand_ins, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _data()
    d.labels[0] = 255  # the first training tile wholly ignored ...
    d.images[0, 1] = 100.0  # ... and bright: counted, it would lift the threshold above every nucleus
    monkeypatch.setattr(T, "load_task_data", lambda task: d)
    seen = []
    real = T.dense_comparisons
    monkeypatch.setattr(
        T, "dense_comparisons", lambda *a, **kw: seen.append(a[3:] + tuple(kw.values())) or real(*a, **kw)
    )
    out = T.run_dense_task(_task(bootstrap=40), progress=False)
    # the other training tile holds no nucleus: its DAPI pixels are all 0, so the threshold is 0
    assert out.info["otsu"] == 0.0 and out.table.set_index("model").loc["otsu", "iou"] == 1.0
    assert seen == [(40,)]  # the task's bootstrap count, not the comparisons' default
