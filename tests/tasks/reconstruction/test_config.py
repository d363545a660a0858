"""Channel reconstruction from an evaluation config: `chada evaluate --config` and run_evaluation.

The manifest (tests/helpers/reconstruction.py) has 3-channel 32-px images whose third channel ``T`` is a shifted copy of
the first (smooth random fields), so an encoder that keeps the spatial layout lets a decoder predict it.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from chada.cli import main
from chada.tasks.evaluation import normalize_config, run_evaluation
from chada.tasks.reconstruction import decoder_budget, parse_reconstruction_tasks
from chada.tasks.reconstruction.task import _target_index
from tests.helpers.reconstruction import SIZE, toy_manifest


class PoolEncoder(nn.Module):
    """Test-only encoder: the 8 x 8 average-pooled input channels, flattened ([B, (C-1) * 64]).
    Its "CLS" keeps the spatial layout a decoder needs, unlike a random-init ViT's."""

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([F.adaptive_avg_pool2d(x[None], 8).flatten() for x in images])


def test_cli_reconstruction_rows_parity_and_figure(tmp_path):
    manifest = toy_manifest(tmp_path, n=24, extra_two_channel=2)
    cfg = {
        "seeds": 2,
        "reconstruction": [
            {
                "name": "T_from_AB",
                "manifest": "manifest.csv",  # relative to the config's folder
                # no target_channel: the manifest's reconstruction_target column
                "image_size": SIZE,
                "epochs": 2,
                "batch_size": 8,
                "lr": "1e-3",  # PyYAML reads this as a string
                "n_examples": 3,
                "models": {
                    "chada": "chada_vit_test",  # D = 32
                    "one_channel": {"model": "one_channel_vit_test", "seed": 1},  # (C-1) * D = 64
                },
            }
        ],
    }
    assert manifest.endswith("manifest.csv")
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report"
    rc = main(["evaluate", "--config", str(tmp_path / "eval.yaml"), "--out", str(out), "--quiet"])
    assert rc == 0
    long = pd.read_csv(out / "results_long.csv")
    assert set(long.kind) == {"reconstruction"} and set(long.fraction) == {1.0}
    assert len(long) == 2 * 2 * 3  # models x seeds x metrics
    for (model, seed), g in long.groupby(["model", "seed"]):
        assert set(g.metric) == {"recon_mse", "recon_mae", "recon_r2"}, (model, seed)
        assert (g.n_train == 18).all() and (g.n_test == 6).all()  # the 2-channel images are skipped
    assert set(long.model) == {"chada", "one_channel"} and set(long.seed) == {0, 1}
    assert set(long.family) == {"untrained"}  # registered names are built with random weights
    mse = long[long.metric == "recon_mse"]
    assert (mse.value >= 0).all() and (mse.chance > 0).all()
    assert long[long.metric == "recon_r2"].chance.abs().max() < 0.1  # train-mean predictor ~ 0

    info = json.loads((out / "results.json").read_text())["extra"]["reconstruction"]
    dims = {r["model"]: r["embed_dim"] for r in info}
    assert dims == {"chada": 32, "one_channel": 64}
    params = [r["decoder_params"] for r in info]
    assert abs(params[0] - params[1]) / params[0] < 0.01
    budget, _ = decoder_budget(SIZE)
    assert all(abs(p - budget) / budget < 0.01 for p in params)
    assert {r["target"] for r in info} == {"T"} and {r["n_skipped"] for r in info} == {2}

    summary = pd.read_csv(out / "results_summary.csv")
    assert set(summary[summary.kind == "reconstruction"].metric) == {"recon_mse", "recon_mae", "recon_r2"}
    md = (out / "results.md").read_text()
    assert "recon_r2" in md and "Reconstruction decoders" in md
    assert (out / "fig1_cls.png").stat().st_size > 0  # R2 x 100 bars
    assert (out / "reconstruction_T_from_AB.png").stat().st_size > 0
    assert not list(out.glob("fig4_*"))  # one data fraction: no low-data plot


def test_decoder_learns_from_informative_encoder(tmp_path):
    manifest = toy_manifest(tmp_path)
    cfg = {
        "seeds": [0, 1],
        "reconstruction": [
            {"name": "T", "manifest": manifest, "target_channel": "t", "epochs": 20, "batch_size": 16,
             "lr": 3e-3, "n_examples": 2, "models": {"pool": {"model": PoolEncoder(), "family": "learned"}}}
        ],
    }  # fmt: skip
    res = run_evaluation(cfg, tmp_path / "out", progress=False, print_table=False, plots=True)
    r2 = res[res.metric == "recon_r2"]
    assert len(r2) == 2 and set(r2.family) == {"learned"}
    # the mean predictor scores ~0; a decoder on the pooled inputs reaches ~0.6 (measured 0.58-0.63)
    assert (r2.value > 0.3).all() and (r2.value > r2.chance + 0.3).all(), r2[["seed", "value", "chance"]]
    assert res.attrs["reconstruction_info"][0]["embed_dim"] == 2 * 64
    ex = res.attrs["reconstruction_examples"][0]
    assert ex.targets.shape == (2, SIZE, SIZE) and ex.predictions["pool"].shape == (2, SIZE, SIZE)
    assert [len(x) for x in ex.inputs] == [2, 2] and ex.input_names[0] == ["A", "B"]
    assert (tmp_path / "out" / "reconstruction_T.png").stat().st_size > 0


def test_reconstruction_config_validation(tmp_path):
    base = {"manifest": "m.csv", "models": {"a": "chada_vit_test"}}
    (task,) = parse_reconstruction_tasks([base], tmp_path, seeds=[3, 4])
    assert task.seeds == [3, 4] and task.target_params is None and task.num_threads == 1
    assert task.manifest == tmp_path / "m.csv" and task.models["a"].model == "chada_vit_test"
    (task,) = parse_reconstruction_tasks(
        [dict(base, target_params="5.2e6", seeds=2, num_threads=2)], tmp_path
    )
    assert task.target_params == 5_200_000 and task.seeds == [0, 1] and task.num_threads == 2
    with pytest.raises(
        ValueError, match=r"reconstruction\.reconstruction_0\.epoch: unknown key \(did you mean 'epochs'\?\)"
    ):
        parse_reconstruction_tasks([dict(base, epoch=3)], tmp_path)
    with pytest.raises(ValueError, match="manifest"):
        parse_reconstruction_tasks([{"models": {"a": "x"}}], tmp_path)
    with pytest.raises(ValueError, match="models"):
        parse_reconstruction_tasks([{"manifest": "m.csv"}], tmp_path)
    with pytest.raises(
        ValueError, match=r"reconstruction\.reconstruction_0\.lr: expected a number > 0, got 'fast'"
    ):
        parse_reconstruction_tasks([dict(base, lr="fast")], tmp_path)
    # a reconstruction-only config is a valid config; the default seeds/threads come from the top level
    settings, _models, tasks = normalize_config({"seeds": 3, "torch_threads": 2, "reconstruction": [base]})
    assert tasks == [] and settings["reconstruction"][0].seeds == [0, 1, 2]
    assert settings["reconstruction"][0].num_threads == 2
    with pytest.raises(ValueError, match="no tasks"):
        normalize_config({"reconstruction": []})


def test_target_channel_resolution():
    names = ["DAPI", "Actin", "Tubulin"]
    assert _target_index("actin", names, {}) == 1
    assert _target_index(-1, names, {}) == 2 and _target_index(2, names, {}) == 2
    assert _target_index(None, names, {"reconstruction_target": "Tubulin"}) == 2
    assert _target_index("Actin", ["DAPI", "Tubulin"], {}) is None  # row skipped
    assert _target_index(None, names, {"reconstruction_target": float("nan")}) is None
    assert _target_index(0, ["DAPI"], {}) is None  # nothing left to encode
    assert _target_index(5, names, {}) is None
