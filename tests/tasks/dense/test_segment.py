"""``chada evaluate`` with a dense: task, then ``chada segment`` with its saved probes; synthetic masks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from chada.cli import main
from chada.tasks.dense import confusion_counts, iou_dice, tile_bundled_nuclei


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dense run on the bundled nuclei with an untrained test ViT and pixel features (a few seconds)."""
    import chada
    from chada.data.bundled import asset_path

    root = tmp_path_factory.mktemp("dense")
    model = chada.create_model("chada_vit_test")
    model.save_pretrained(root / "vit")
    cfg = {
        "dense": [{
            "name": "nuclei", "source": "dsb2018", "tile": 32, "heads": ["linear"], "seeds": [0],
            "steps": 60, "bootstrap": 50, "models": {"vit": {"model": "vit", "family": "untrained"}, "handmade": "handmade"},
        }]
    }  # fmt: skip
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", "--config", str(root / "cfg.yaml"), "--out", str(root / "ev")]) == 0
    image = root / "nuclei.tif"
    tifffile.imwrite(image, tifffile.imread(asset_path("dsb2018_img2d.tif")))
    return root, image


def test_evaluate_writes_the_dense_table_figure_and_probes(trained) -> None:
    root, _ = trained
    ev = root / "ev"
    for name in ("dense_nuclei.md", "dense_nuclei.csv", "dense_nuclei_sizes.csv", "dense_nuclei.png",
                 "probes/nuclei/vit_linear.safetensors", "probes/nuclei/vit_linear.json"):  # fmt: skip
        assert (ev / name).exists(), name
    assert "IoU [95 % CI]" in (ev / "results.md").read_text()
    long = pd.read_csv(ev / "results_long.csv")
    assert set(long.kind) == {"dense"} and set(long.metric) == {"dense_iou", "dense_dice"}
    assert set(long.model) == {"vit", "handmade", "otsu", "all_background"}
    meta = json.loads((ev / "probes/nuclei/vit_linear.json").read_text())
    assert meta["channel_names"] == ["Nuclei"] and meta["tile"] == 32 and len(meta["fingerprint"]) == 40
    from chada.models.precision import precision_name, resolve_precision

    assert meta["precision"] == precision_name(resolve_precision("auto", "cpu")[0])  # evaluate's default


@pytest.mark.parametrize("model", ["vit", "handmade"])
def test_segment_reproduces_the_task_score(trained, model, capsys, monkeypatch) -> None:
    """The whole image through chada segment: on the test half, the mask scores what the task scored
    (both ran at the default --precision auto, so in the same precision)."""
    import chada.tasks.dense.features as dense_features
    from chada.models.precision import resolve_precision

    real, seen = dense_features.model_maps, []
    monkeypatch.setattr(
        dense_features, "model_maps", lambda *a, **k: seen.append(k["dtype"]) or real(*a, **k)
    )
    root, image = trained
    out = root / f"mask_{model}.png"
    ref = str(root / "vit") if model == "vit" else "handmade"
    probe = root / "ev" / "probes" / "nuclei" / f"{model}_linear"
    assert main(["segment", "--model", ref, "--image", str(image), "--channel-names", "nuclei",
                 "--probe", str(probe), "--out", str(out)]) == 0  # fmt: skip
    auto = resolve_precision("auto", "cpu")[0]
    assert seen == ([auto] if model == "vit" else [])
    assert ("precision: " in capsys.readouterr().out) == (model == "vit")
    from PIL import Image

    mask = np.asarray(Image.open(out)) == 255
    data = tile_bundled_nuclei(32)
    src = data.sources[0]
    labels = np.where(src.ignore, 255, src.instances > 0).astype(np.uint8)
    iou = iou_dice(confusion_counts(mask[:, 256:], labels[:, 256:]).sum(0))[0]
    long = pd.read_csv(root / "ev" / "results_long.csv")
    row = long[(long.model == model) & (long.metric == "dense_iou")]
    assert iou == pytest.approx(float(row.value.iloc[0]), abs=1e-6)


def _segment(args, capsys) -> tuple[int, str]:
    code = main(["segment", *args])
    err = capsys.readouterr().err
    return code, err


def test_segment_bad_inputs_exit_2_with_one_line(trained, capsys) -> None:
    root, image = trained
    probe = str(root / "ev" / "probes" / "nuclei" / "vit_linear")
    out = str(root / "m.png")
    two = root / "two.tif"
    tifffile.imwrite(
        two, np.stack([tifffile.imread(image)] * 2), photometric="minisblack", metadata={"axes": "CYX"}
    )
    (root / "bad.json").write_text("{not json")
    (root / "bad.safetensors").write_bytes(b"junk")
    cases = {
        "channel count": (["--model", str(root / "vit"), "--image", str(two), "--probe", probe, "--out", out], "2 channel"),
        "missing image": (["--model", str(root / "vit"), "--image", str(root / "nope.tif"), "--probe", probe, "--out", out], "nope.tif"),
        "missing probe": (["--model", str(root / "vit"), "--image", str(image), "--probe", str(root / "none"), "--out", out], "none.json"),
        "corrupt probe": (["--model", str(root / "vit"), "--image", str(image), "--probe", str(root / "bad"), "--out", out], "bad.json"),
        "other model": (["--model", "chada_vit_test", "--seed", "3", "--image", str(image), "--probe", probe, "--out", out], "not the model"),
        "handmade for a vit probe": (["--model", "handmade", "--image", str(image), "--probe", probe, "--out", out], "handmade"),
        "wrong channel name": (["--model", str(root / "vit"), "--image", str(image), "--channel-names", "DAPI", "--probe", probe, "--out", out], "Nuclei"),
        "bad output suffix": (["--model", str(root / "vit"), "--image", str(image), "--probe", probe, "--out", str(root / "m.jpg")], ".png"),
    }  # fmt: skip
    for what, (args, needle) in cases.items():
        code, err = _segment(args, capsys)
        assert code == 2, (what, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (what, err)
        assert needle in err, (what, err)


def test_synth_masks_are_written_and_the_relation_mask_needs_both_markers(tmp_path) -> None:
    from chada.data.readers import read_image
    from chada.data.synth import MASK_NAMES, generate

    manifest = generate(tmp_path, n_per_assay=8, size=32, assays=["markers_2ch"], marker_pattern="domain")
    df = pd.read_csv(manifest)
    assert (df.mask_names == ";".join(MASK_NAMES)).all()
    for _, row in df.iterrows():
        masks = dict(zip(MASK_NAMES, read_image(tmp_path / row.mask_file) > 0))
        assert masks["nucleus"].sum() < masks["cell"].sum() and not (masks["nucleus"] & ~masks["cell"]).any()
        rel = masks["MarkerB_in_MarkerA"]
        assert (rel == (masks["MarkerA"] & masks["MarkerB"])).all()
        assert rel.any() == (row.interchannel_label == 1)  # empty exactly when the markers are apart
    plain = generate(
        tmp_path / "plain",
        n_per_assay=8,
        size=32,
        assays=["markers_2ch"],
        marker_pattern="domain",
        masks=False,
    )
    assert "mask_file" not in pd.read_csv(plain).columns
    img = lambda p, r: read_image(p / r.channel_files.split(";")[0])  # noqa: E731
    assert all((img(tmp_path, r) == img(tmp_path / "plain", r)).all() for _, r in df.iterrows())


def test_pixel_features_shape_names_and_blob_response() -> None:
    from chada.features.pixels import pixel_feature_names, pixel_features

    yy, xx = np.mgrid[0:32, 0:32]
    blob = np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / (2 * 2.0**2)).astype(np.float32)
    f = pixel_features(np.stack([blob, np.zeros_like(blob)]))
    names = pixel_feature_names(["A", "B"])
    assert f.shape == (22, 32, 32) and len(names) == 22 and names[0] == "A:intensity"
    log2 = f[names.index("A:log_2")]
    assert (
        log2[16, 16] == log2.min() < 0
    )  # a bright blob of sigma 2 is the LoG's strongest (negative) response
    assert np.allclose(f[11:], 0)  # an empty channel gives zeros everywhere
    with pytest.raises(ValueError, match="NaN"):
        pixel_features(np.full((1, 8, 8), np.nan, np.float32))


def test_a_dense_only_config_logs_only_its_own_steps(trained, capfd) -> None:
    from chada.tasks.evaluation import run_evaluation

    root, _ = trained
    lines: list[str] = []
    run_evaluation(
        str(root / "cfg.yaml"), root / "ev_log", progress=True, print_table=False, log=lines.append
    )
    assert "feature tasks" not in capfd.readouterr().err  # no empty progress bar for the absent steps
    assert lines[0] == "dense nuclei: 2 model(s), heads linear ..." and lines[1].startswith(
        "dense nuclei: 2 model(s), heads linear: done in"
    )
    assert not any("probes, kNN" in x or "diagnostics" in x or "Fig. 1" in x for x in lines), lines
