"""The option bundles (encode/options.py), their builders from the command line (cli/options.py), the
one settings record of a run (embed.run_settings) and what the Encoder interface answers."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from chada.cli import options as o
from chada.encode.embed import run_settings
from chada.encode.encoders import FeatureKindEncoder, ModelEncoder, resolve_encoder
from chada.encode.inputs import weights_digest, weights_sha1
from chada.encode.options import ChannelOptions, ImageOptions, OutputOptions, RunOptions, Selection

# -- the bundles check their values once, when built --------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ImageOptions(size=0), r"^image_size must be a positive int, 'model' or None \(native\), got 0$"),
        (lambda: ImageOptions(size="big"), r"^image_size must be .*got 'big'$"),
        (lambda: ImageOptions(size=True), r"^image_size must be .*got True$"),
        (lambda: ImageOptions(nan_policy="keep"), r"^nan_policy must be one of \('error', 'replace'\), got 'keep'$"),
        (lambda: ImageOptions(nan_policy="replace", nan_fill=float("nan")), r"^nan_fill must be a finite number"),
        (lambda: ChannelOptions(unknown="ignore"), r"^unknown_channels must be one of .*got 'ignore'$"),
        (lambda: RunOptions(batch_size=0), r"^batch_size must be >= 1, got 0$"),
        (lambda: RunOptions(num_workers=-1), r"^num_workers must be >= 0, got -1$"),
        (lambda: OutputOptions(chunk_batches=0), r"^chunk_batches must be >= 1, got 0$"),
        (lambda: OutputOptions(verify_inputs="md5"), r"^verify_inputs must be one of \('stat', 'hash'\), got 'md5'$"),
    ],
)
def test_bundles_refuse_bad_values_in_one_line(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bundles_accept_their_forms_and_are_frozen():
    assert ImageOptions(size="native").size is None and ImageOptions().size == "model"
    assert ImageOptions(size=32).size == 32
    assert ImageOptions(nan_policy="replace", nan_fill=0.5).dataset_kwargs() == {
        "normalize": "percentile", "nan_policy": "replace", "nan_fill": 0.5}  # fmt: skip
    assert Selection(datasets=["a"], split="test", root="r").dataset_kwargs() == {
        "root": "r", "split": "test", "datasets": ["a"]}  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunOptions().batch_size = 3  # type: ignore[misc]


def test_channel_options_build_the_policy():
    policy = ChannelOptions(order=["DNA", "Actin"], unknown="error", aliases={"dapi": "DNA"}).policy(None)
    assert policy.to_dict()["canonical"] == ["DNA", "Actin"] and policy.to_dict()["unknown"] == "error"
    assert policy.resolve(["Actin", "DAPI"], "img") == [1, 0]


# -- built once from the command line ------------------------------------------------------------------


def _embed_args(*argv: str) -> argparse.Namespace:
    from chada.cli import embed

    parser = argparse.ArgumentParser()
    embed.register(parser.add_subparsers())
    return parser.parse_args(["embed", *argv])


def test_cli_builds_every_bundle_from_the_flags():
    args = _embed_args("--image-size", "native", "--normalize", "minmax", "--nan-policy", "replace", "--nan-fill", "2",
                       "--channel-order", "DNA,Actin", "--strict-channels", "--channel-alias", "dapi=DNA",
                       "--batch-size", "5", "--workers", "2", "--device", "cpu", "--seed", "4", "--quiet",
                       "--dataset", "a", "b", "--split", "test", "--chunk-batches", "3", "--no-resume",
                       "--verify-inputs", "hash")  # fmt: skip
    assert o.image_options(args) == ImageOptions(size=None, normalize="minmax", nan_policy="replace", nan_fill=2.0)
    assert o.channel_options(args) == ChannelOptions(order=["DNA", "Actin"], unknown="error", aliases={"dapi": "DNA"})
    assert o.run_options(args, dtype=torch.bfloat16) == RunOptions(
        batch_size=5, num_workers=2, device="cpu", dtype=torch.bfloat16, seed=4, progress=False)  # fmt: skip
    assert o.selection(args) == Selection(datasets=["a", "b"], split=["test"])
    assert o.output_options(args, (1, 3)) == OutputOptions(resume=False, chunk_batches=3, verify_inputs="hash",
                                                           shard=(1, 3))  # fmt: skip


def test_cli_defaults_are_the_bundle_defaults():
    args = _embed_args()
    assert o.image_options(args) == ImageOptions()
    assert o.channel_options(args) == ChannelOptions(aliases={})
    assert o.run_options(args) == RunOptions()
    assert o.selection(args) == Selection()
    assert o.output_options(args) == OutputOptions()
    # a command without the flags gets the defaults too (chada benchmark chammi has no --nan-policy)
    assert o.image_options(argparse.Namespace(image_size=64)) == ImageOptions(size=64)


def test_cli_refuses_nan_fill_without_replace():
    with pytest.raises(ValueError, match="--nan-fill only applies with --nan-policy replace"):
        o.image_options(_embed_args("--nan-fill", "1"))


# -- one record of the run's options --------------------------------------------------------------------


class _Data:
    frame = pd.DataFrame({"image_id": ["a", "b"]})


def _settings(encoder, **changes):
    image = ImageOptions(**changes.get("image", {}))
    run = RunOptions(**changes.get("run", {}))
    output = OutputOptions(**changes.get("output", {}))
    policy = ChannelOptions().policy(encoder.module)
    return run_settings(encoder, pd.DataFrame(), _Data(), {"cls": "cls"}, image.size if image.size != "model" else None,
                        image, run, output, policy)  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [{"image": {"normalize": "minmax"}}, {"image": {"nan_policy": "replace"}},
     {"image": {"nan_policy": "replace", "nan_fill": 1.0}}, {"image": {"size": 16}}, {"run": {"batch_size": 3}},
     {"output": {"chunk_batches": 2}}, {"output": {"verify_inputs": "hash"}}],
)  # fmt: skip
def test_every_option_that_changes_the_output_is_in_the_settings(change):
    """A resumed run reuses chunks only when the settings match: an option missing from them would mix
    chunks made two ways."""
    enc = FeatureKindEncoder()
    assert _settings(enc, **change) != _settings(enc)


def test_settings_name_the_seed_only_of_random_weights_and_the_weights_otherwise():
    torch.manual_seed(0)
    random = resolve_encoder("chada_vit_test", seed=4)
    module = ModelEncoder(random.module, {"source": "pretrained"})
    s = _settings(random, run={"seed": 4})
    assert s["seed"] == 4 and "weights" not in s and s["precision"] == "fp32"
    s = _settings(module, run={"seed": 4})
    assert s["seed"] is None and s["weights"] == weights_digest(random.module)
    assert _settings(FeatureKindEncoder())["precision"] is None


# -- what the Encoder interface answers -------------------------------------------------------------------


def test_feature_kind_encoder_has_no_model_to_move_or_digest():
    enc = FeatureKindEncoder("shortcut")
    enc.set_dtype(torch.bfloat16)
    assert not enc.is_model and enc.precision is None and enc.dtype == torch.float32
    assert enc.to(torch.device("cpu")) is enc and enc.weights_digest() is None and not enc.random_init
    assert enc.fingerprint() == "shortcut" and enc.name == "shortcut" and enc.fixed_pool("all") == "shortcut"
    enc.check_forward([{"image": torch.zeros(3, 8000, 8000), "image_id": "big"}], torch.device("cpu"), str, set())


def test_model_encoder_answers_for_its_module():
    torch.manual_seed(0)
    enc = resolve_encoder("one_channel_vit_test", seed=1)
    assert enc.is_model and enc.random_init and enc.weights_digest() is None
    enc.set_dtype(torch.bfloat16)
    assert enc.precision == "bf16" and enc.name == type(enc.module).__name__
    enc.module.train()
    assert enc.to(torch.device("cpu")) is enc and not enc.module.training
    assert enc.fingerprint() == weights_sha1(enc.module) and len(enc.fingerprint()) == 40
    assert enc.fixed_pool("cls") == "mean" and enc.fixed_pool("mean_all") == "mean_all"
    with pytest.raises(ValueError, match="pool 'nope' not supported by"):
        enc.fixed_pool("nope")
    kept = ModelEncoder(enc.module, {"source": "pretrained"})
    assert not kept.random_init and kept.weights_digest() == weights_digest(enc.module)


def test_model_encoder_checks_the_forward_pass_before_it_runs(monkeypatch):
    import chada.encode.budget as budget

    seen = []
    monkeypatch.setattr(budget, "check_forward", lambda module, samples, *a: seen.append((module, len(samples))))
    enc = resolve_encoder("chada_vit_test")
    enc.check_forward([{"image": np.zeros((2, 16, 16))}], torch.device("cpu"), str, set())
    FeatureKindEncoder().check_forward([{"image": np.zeros((2, 16, 16))}], torch.device("cpu"), str, set())
    assert seen == [(enc.module, 1)]


def test_a_commands_missing_flags_keep_its_own_defaults():
    """`chada features` has no --batch-size or --chunk-batches: its 64 images per pass and 4 passes per
    chunk must survive the builders (the bundle defaults, 32 and 20, would change its chunks)."""
    from chada.cli import features
    from chada.encode.handmade import FEATURES_IMAGE, FEATURES_OUTPUT, FEATURES_RUN

    parser = argparse.ArgumentParser()
    features.register(parser.add_subparsers())
    args = parser.parse_args(["features", "--manifest", "m.csv", "--kind", "handmade", "--out", "f.npz", "--quiet"])
    assert o.run_options(args, base=FEATURES_RUN) == RunOptions(batch_size=64, progress=False)
    assert o.output_options(args, base=FEATURES_OUTPUT) == OutputOptions(chunk_batches=4)
    assert o.image_options(args, base=FEATURES_IMAGE) == ImageOptions(size=None)
