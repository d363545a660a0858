"""Fuzz suite, issue 26 (items 3-8): hostile inputs beside the case table of ``test_inputs.py``.

The table holds the cases one command line refuses (FIFOs, sockets, patches, header columns, model
folders). Here are the ones that need more than an exit code: a permission-denied file named as such
(a real run without root's override), an image too large for the machine's memory, ``data check``'s
patch warning, ``--strict-channels`` against the stains a model saw, and ``chada evaluate`` on
feature files that hold different images, a single class or an infinite target.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chada.cli import main
from chada.encode.budget import image_tokens
from chada.encode.store import EmbeddingSet, save_embeddings
from tests.helpers.fuzz import (
    BAD_ID,
    bad_manifest,
    model_folder_case,
    run_without_override,
    tif_case,
    write_case,
)


def _err(capfd) -> str:
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, out + err
    return err


# ------------------------------------------------------------------------------------ item 5
def test_permission_denied_is_named_as_such_not_corrupt(tmp_path):
    path = bad_manifest(tmp_path, "good0.tif")
    (tmp_path / "good1.tif").chmod(0o000)
    try:
        for argv in (["data", "check", str(path)],
                     ["embed", "--model", "chada_vit_test", "--manifest", str(path), "--out", str(tmp_path / "e.npz"),
                      "--quiet"]):  # fmt: skip
            proc = run_without_override(argv, cwd=tmp_path)
            assert proc.returncode == 2, proc.stderr
            assert "permission denied" in proc.stderr and "good1.tif" in proc.stderr, proc.stderr
            assert "corrupt" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    finally:
        (tmp_path / "good1.tif").chmod(0o644)


def test_data_check_warns_of_a_size_that_is_not_a_multiple_of_the_patch(tmp_path, capfd):
    path = write_case("bad.tif", tif_case(np.zeros((2, 20, 20), np.uint16)))(tmp_path)
    assert main(["data", "check", str(path)]) == 0
    err = _err(capfd)
    assert f"({BAD_ID}): [patch_multiple, warning]" in err and "bad.tif" in err and "20x20" in err
    assert main(["data", "check", str(path), "--patch-size", "0"]) == 0
    assert "patch" not in _err(capfd)


# ------------------------------------------------------------------------------------ item 4
def test_token_count_of_the_issue_example():
    # 12000 x 12000 px, 4 channels, 16 px patches: the issue's 2.25 M tokens (+ CLS)
    assert image_tokens(4, 12000, 12000, 16) == 2_250_001


def test_image_beyond_the_machine_memory_is_refused_with_how_to_resize(tmp_path, capfd, monkeypatch):
    import chada.encode.budget as budget

    path = bad_manifest(tmp_path, "good0.tif")
    # one 16 x 16 two-channel image through chada_vit_test needs ~42 KiB per block: give the machine 16 KiB
    monkeypatch.setattr(budget, "machine_memory", lambda device=None: 16 * 1024)
    argv = [
        "embed",
        "--model",
        "chada_vit_test",
        "--manifest",
        str(path),
        "--out",
        str(tmp_path / "e.npz"),
        "--quiet",
    ]
    assert main(argv) == 2
    err = _err(capfd)
    assert "good0" in err and "good0.tif" in err and "tokens" in err and "--image-size 224" in err, err
    assert not (tmp_path / "e.npz").exists()
    monkeypatch.setattr(budget, "machine_memory", lambda device=None: 1 << 40)
    assert main(argv) == 0


def test_long_sequences_get_one_warning(tmp_path, capfd, monkeypatch):
    import chada.encode.budget as budget

    monkeypatch.setattr(budget, "LONG_SEQUENCE", 8)  # 2 channels x 4 patches + CLS = 9 tokens per image
    path = bad_manifest(tmp_path, "good0.tif")
    argv = [
        "embed",
        "--model",
        "chada_vit_test",
        "--manifest",
        str(path),
        "--out",
        str(tmp_path / "e.npz"),
        "--quiet",
    ]
    assert main(argv) == 0
    lines = [ln for ln in _err(capfd).splitlines() if "tokens per image" in ln]
    assert len(lines) == 1 and "--image-size 224" in lines[0], lines


# ------------------------------------------------------------------------------------ item 8
@pytest.mark.parametrize(("names", "code"), [("DAPI;Actin", 0), ("dapi;ACTIN", 0), ("DAPI;Mito", 2)])
def test_strict_channels_checks_the_stains_the_model_saw(tmp_path, capfd, names, code):
    path = model_folder_case(extra={"channel_names_seen": ["DAPI", "Actin"]})(tmp_path)
    frame = pd.read_csv(path)
    frame["channel_names"] = names
    frame.to_csv(path, index=False)
    argv = ["embed", "--model", str(tmp_path / "model"), "--manifest", str(path), "--out", str(tmp_path / "e.npz"),
            "--quiet", "--strict-channels"]  # fmt: skip
    assert main(argv) == code
    err = _err(capfd)
    if code:
        assert "'Mito'" in err and "saw in pretraining" in err and "--channel-order" not in err, err


# ------------------------------------------------------------------------------------ items 6, 7
def _features(path: Path, ids: list[str], labels: list, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({"image_id": ids, "label": labels})
    save_embeddings(EmbeddingSet({"cls": rng.normal(size=(len(ids), 8)).astype(np.float32)}, meta, {}), path)
    return path


def _evaluate(files: list[Path], out: Path, *more: str) -> int:
    return main(["evaluate", "--embeddings", *map(str, files), "--label-column", "label", "--out", str(out),
                 "--quiet", "--seeds", "1", "--no-plots", "--fractions", "1", *more])  # fmt: skip


def test_models_of_one_table_are_scored_on_the_images_they_share(tmp_path, capfd):
    ids = [f"img{i:03d}" for i in range(80)]
    labels = [("a", "b")[i % 2] for i in range(80)]
    big = _features(tmp_path / "big.npz", ids, labels)
    small = _features(tmp_path / "small.npz", ids[:16], labels[:16], seed=1)
    assert _evaluate([big, small], tmp_path / "ev") == 0
    err = _err(capfd)
    assert "big: 80, small: 16" in err and "the 16 images they share" in err, err
    rows = (
        pd.read_csv(tmp_path / "ev" / "results.csv") if (tmp_path / "ev" / "results.csv").exists() else None
    )
    summary = json.loads((tmp_path / "ev" / "results.json").read_text())["summary"]
    assert {r["model"] for r in summary} == {"big", "small"}
    assert {int(r["n_test"]) for r in summary} == {16}, summary
    assert rows is None or set(rows["n_test"]) == {16}


def test_feature_files_without_common_images_are_refused(tmp_path, capfd):
    a = _features(tmp_path / "a.npz", [f"a{i}" for i in range(16)], ["x", "y"] * 8)
    b = _features(tmp_path / "b.npz", [f"b{i}" for i in range(16)], ["x", "y"] * 8)
    assert _evaluate([a, b], tmp_path / "ev") == 2
    err = _err(capfd)
    assert "a: 16, b: 16" in err and "share 0" in err, err


def test_a_single_class_task_is_a_warning_not_a_table_of_100(tmp_path, capfd):
    one = _features(tmp_path / "one.npz", [f"i{i}" for i in range(20)], ["a"] * 20)
    assert _evaluate([one], tmp_path / "ev") == 0
    err = _err(capfd)
    assert "single-class" in err and "'a'" in err, err
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["summary"] == []


def test_an_infinite_regression_target_is_refused_naming_the_image(tmp_path, capfd):
    target = [float(i) for i in range(20)]
    target[7] = float("inf")
    f = _features(tmp_path / "reg.npz", [f"i{i}" for i in range(20)], target)
    assert _evaluate([f], tmp_path / "ev", "--kind", "regression") == 2
    err = _err(capfd)
    assert "'i7'" in err and "infinite" in err, err


@pytest.mark.parametrize("value", ["1.5", "0", "nan", "-0.2"])
def test_test_fraction_outside_the_open_unit_interval_is_refused(tmp_path, capfd, value):
    f = _features(tmp_path / "f.npz", [f"i{i}" for i in range(20)], ["a", "b"] * 10)
    assert _evaluate([f], tmp_path / "ev", "--test-fraction", value) == 2
    assert "--test-fraction" in _err(capfd)


@pytest.mark.parametrize("value", ["nan", "1.5", "-0.1"])
def test_segment_threshold_outside_zero_one_is_refused(tmp_path, capfd, value):
    argv = ["segment", "--model", "handmade", "--image", str(tmp_path / "x.tif"), "--probe", str(tmp_path / "p"),
            "--out", str(tmp_path / "mask.png"), "--threshold", value]  # fmt: skip
    assert main(argv) == 2
    assert "--threshold" in _err(capfd)
    assert not (tmp_path / "mask.png").exists()


def test_out_dir_of_an_evaluation_config_resolves_against_the_config_folder(tmp_path, capfd, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    _features(conf / "f.npz", [f"i{i}" for i in range(20)], ["a", "b"] * 10)
    (conf / "eval.yaml").write_text("out_dir: results/eval\nseeds: 1\nfractions: [1.0]\nmodels:\n  m: f.npz\n"
                                    "tasks:\n  - name: t\n    label_column: label\n")  # fmt: skip
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", "--config", str(conf / "eval.yaml"), "--quiet", "--no-plots"]) == 0
    capfd.readouterr()
    assert (conf / "results" / "eval" / "results.json").exists()
    assert not (elsewhere / "results").exists()
