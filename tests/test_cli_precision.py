"""``--precision {auto,fp32,bf16}`` on every command that runs a model (issue 22).

bf16 runs the forward pass under autocast (:mod:`chada.models.precision`); files keep float32 features.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import chada
import chada.encode.embed as embed_mod
import chada.models.precision as precision_mod
from chada.cli import build_parser, main
from chada.encode.store import load_embeddings
from test_encode_embed import _write_manifest

MODES = ("packed", "varlen")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A manifest of 3-, 1- and 5-channel images (32 px) and one random test model saved per attention mode."""
    root = tmp_path_factory.mktemp("precision")
    manifest = _write_manifest(root, [("A", 3, 32, 4), ("B", 1, 32, 2), ("C", 5, 32, 3)])
    for mode in MODES:
        torch.manual_seed(0)
        chada.create_model("chada_vit_test").set_attention(mode).save_pretrained(root / mode)
    return root, manifest


def _embed(root, manifest, out, *extra):
    return main(["embed", "--model", str(root / "packed"), "--manifest", str(manifest), "--out", str(out),
                 "--batch-size", "4", "--quiet", *extra])  # fmt: skip


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("mode", MODES)
def test_bf16_embeddings_match_fp32(data, tmp_path, capfd, mode):
    root, manifest = data
    emb = {}
    for p in ("fp32", "bf16"):
        out = tmp_path / f"{p}.npz"
        args = ["embed", "--model", str(root / mode), "--manifest", str(manifest), "--out", str(out),
                "--batch-size", "4", "--quiet", "--precision", p]  # fmt: skip
        assert main(args) == 0
        assert f"precision: {p} (as asked" in capfd.readouterr().err
        emb[p] = load_embeddings(out)
        assert emb[p].info["precision"] == p
    for pool in ("cls", "all"):
        a, b = emb["fp32"].features[pool], emb["bf16"].features[pool]
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (9, a.shape[1])
        assert _cosine(a, b).min() >= 0.999, (mode, pool, _cosine(a, b).min())
        assert not np.array_equal(a, b)  # bf16 really ran


@pytest.mark.parametrize(("feature", "expected"), [("amx_bf16", "bf16"), ("avx512_bf16", "bf16"), (None, "fp32")])
def test_auto_says_what_it_picked(data, tmp_path, capfd, monkeypatch, feature, expected):
    """``auto`` follows the CPU's bf16 feature (faked here, so the test does not depend on this machine)."""
    root, manifest = data
    monkeypatch.setattr(precision_mod, "cpu_bf16_feature", lambda flags=None: feature)
    out = tmp_path / "auto.npz"
    assert _embed(root, manifest, out, "--dataset", "B") == 0  # auto is the default
    err = capfd.readouterr().err
    said = f"the CPU reports {feature}" if feature else "the CPU reports neither amx_bf16 nor avx512_bf16"
    assert f"precision: {expected} (auto: {said})" in err
    assert load_embeddings(out).info["precision"] == expected


def test_resume_never_mixes_precisions(data, tmp_path, monkeypatch, caplog):
    """fp32 chunks of an interrupted run are discarded by a bf16 re-run (precision is in the resume key)."""
    root, manifest = data
    assert _embed(root, manifest, tmp_path / "fresh.npz", "--precision", "bf16") == 0
    fresh = load_embeddings(tmp_path / "fresh.npz").features["cls"]
    real, calls = embed_mod._embed_samples, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    out = tmp_path / "r.npz"
    monkeypatch.setattr(embed_mod, "_embed_samples", interrupted)
    assert _embed(root, manifest, out, "--precision", "fp32", "--chunk-batches", "1") == 130
    assert len(list((tmp_path / "r.npz.parts").glob("chunk_*.npz"))) == 2
    monkeypatch.setattr(embed_mod, "_embed_samples", counting)
    calls["n"] = 0
    with caplog.at_level(logging.WARNING):
        assert _embed(root, manifest, out, "--precision", "bf16", "--chunk-batches", "1") == 0
    assert "made with other settings" in caplog.text
    assert calls["n"] == 3  # all 3 batches of 4 recomputed
    np.testing.assert_array_equal(load_embeddings(out).features["cls"], fresh)


COMMANDS = {
    "embed": ["embed", "--model", "m", "--manifest", "m.csv", "--out", "o.npz"],
    "evaluate": ["evaluate", "--config", "c.yaml"],
    "attention": ["attention", "--model", "m", "--image", "a.tif", "--out", "a.png"],
    "subsets": ["subsets", "--manifest", "m.csv", "--models", "m", "--out", "o"],
    "segment": ["segment", "--model", "m", "--image", "a.tif", "--probe", "p", "--out", "m.png"],
    "benchmark chammi": ["benchmark", "chammi", "--model", "m", "--root", "r", "--out", "o"],
    "quickstart": ["quickstart"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_model_command_takes_the_option(command, capsys):
    parser = build_parser()
    args = parser.parse_args([*COMMANDS[command], "--precision", "bf16"])
    assert args.precision == "bf16"
    default = parser.parse_args(COMMANDS[command]).precision
    assert default == ("fp32" if command == "quickstart" else "auto")  # quickstart: the README's fp32 numbers
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*COMMANDS[command], "--precision", "fp16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fp16'" in err and "Traceback" not in err


def _spy(monkeypatch, module, name, seen):
    """Wrap ``module.name`` to record the dtype it is given (or the autocast state it runs under)."""
    real = getattr(module, name)

    def spy(*a, **k):
        seen.append(k.get("dtype", torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
        return real(*a, **k)

    monkeypatch.setattr(module, name, spy)


def test_attention_runs_in_the_precision_asked(data, tmp_path, monkeypatch, capfd):
    import chada.viz.attention as viz

    root, manifest = data
    seen: list = []
    _spy(monkeypatch, viz, "compute_model_attention", seen)
    for p, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
        seen.clear()
        assert main(["attention", "--model", str(root / "varlen"), "--manifest", str(manifest), "--image-id",
                     "A_000", "--out", str(tmp_path / f"{p}.png"), "--no-heads", "--precision", p]) == 0  # fmt: skip
        assert seen == [dtype]
        captured = capfd.readouterr()
        assert f"precision: {p} (as asked" in captured.err and "attention mass per channel" in captured.out


def test_chammi_embeds_in_the_precision_asked(tmp_path, monkeypatch, capfd):
    import chada.encode.encoders as encoders
    from test_chammi import _make_chammi

    _make_chammi(tmp_path / "CHAMMI", n_train=3, n_per_task=1)
    seen: list = []
    real = encoders.autocast  # every forward pass of a model encoder runs under it, in its dtype
    monkeypatch.setattr(encoders, "autocast", lambda dtype, *a, **k: seen.append(dtype) or real(dtype, *a, **k))
    feats = {}
    for p in ("fp32", "bf16"):
        out = tmp_path / p
        assert main(["benchmark", "chammi", "--model", "chada_vit_test", "--root", str(tmp_path / "CHAMMI"),
                     "--out", str(out), "--image-size", "16", "--datasets", "CP", "--quiet", "--precision", p]) == 0  # fmt: skip
        assert f"precision: {p} (as asked" in capfd.readouterr().err
        feats[p] = np.load(out / "features" / "CP" / "chada_vit_test.npy")
    assert set(seen) == {torch.float32, torch.bfloat16}
    assert feats["bf16"].dtype == np.float32 and _cosine(feats["fp32"], feats["bf16"]).min() >= 0.999


def test_evaluate_reconstruction_encoders_run_in_the_precision_asked(tmp_path, monkeypatch, capfd):
    import yaml

    import chada.tasks.reconstruction.task as recon
    from test_tasks_reconstruction_config import SIZE, _manifest

    _manifest(tmp_path, n=8)
    cfg = {"seeds": 1, "reconstruction": [{"name": "T", "manifest": "manifest.csv", "image_size": SIZE, "epochs": 1,
                                           "batch_size": 8, "models": {"chada": "chada_vit_test"}}]}  # fmt: skip
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    seen: list = []
    _spy(monkeypatch, recon, "embed_images", seen)
    out = tmp_path / "report"
    assert main(["evaluate", "--config", str(tmp_path / "eval.yaml"), "--out", str(out), "--quiet", "--no-plots",
                 "--precision", "bf16"]) == 0  # fmt: skip
    assert seen and set(seen) == {torch.bfloat16}
    assert "precision: bf16 (as asked" in capfd.readouterr().err
    assert json.loads((out / "results.json").read_text())["extra"]["precision"] == ["bf16"]


def test_evaluate_of_feature_files_runs_no_model_and_says_no_precision(data, tmp_path, capfd):
    root, manifest = data
    assert _embed(root, manifest, tmp_path / "e.npz", "--precision", "fp32") == 0
    capfd.readouterr()
    assert main(["evaluate", "--embeddings", str(tmp_path / "e.npz"), "--seeds", "1", "--fractions", "1",
                 "--test-fraction", "0.5", "--out", str(tmp_path / "ev"), "--quiet", "--no-plots"]) == 0  # fmt: skip
    assert "precision:" not in capfd.readouterr().err
    assert "precision" not in json.loads((tmp_path / "ev" / "results.json").read_text())["extra"]


@pytest.mark.parametrize(("argv", "expected"), [([], "fp32"), (["--precision", "bf16"], "bf16")])
def test_quickstart_option_reaches_its_settings(tmp_path, monkeypatch, argv, expected):
    import chada.pipeline.quickstart as qs

    got = []
    monkeypatch.setattr(qs, "run_quickstart", lambda s: got.append(s) or tmp_path / "report.md")
    assert main(["quickstart", "--fast", "--out", str(tmp_path / "qs"), *argv]) == 0
    assert got[0].precision == expected


def test_quickstart_embedding_stage_runs_in_its_precision(data, tmp_path, monkeypatch):
    import chada.encode.embed as embed_api
    import chada.encode.handmade as handmade
    from chada.pipeline.settings import QuickstartSettings
    from chada.pipeline.stages import EMBED_GROUPS, stage_embed

    root, manifest = data
    seen: list = []
    monkeypatch.setattr(embed_api, "embed_manifest", lambda *a, **k: seen.append(k["run"].dtype))
    monkeypatch.setattr(handmade, "features_for_manifest", lambda *a, **k: None)
    lines: list[str] = []
    model = {"chada_vit": str(root / "packed")}
    s = QuickstartSettings.make(tmp_path, precision="bf16")
    result = stage_embed(s, dict.fromkeys(EMBED_GROUPS, str(manifest)), model, model, log=lines.append)
    assert seen == [torch.bfloat16] * (2 * len(EMBED_GROUPS))  # trained + untrained, every group
    assert result["precision"] == "bf16" and "[embed] precision: bf16 (as asked" in lines[0]
