"""The encoders of :mod:`chada.encode.encoders` on stand-ins whose answers are written by hand: a tiny
module with ``forward_features`` / ``forward_head`` (what :class:`ModelEncoder` asks of it, the
precision and device it runs under), the hand-made kinds with ``extract_features`` recorded (what
:class:`FeatureKindEncoder` hands it, how it names images and nuclear channels, what ``finish`` adds),
and :func:`resolve_model` / :func:`resolve_encoder` / :func:`embed_images` (every form a user can name
and every refusal, word for word)."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import chada.features.extract as extract
from chada.encode import encoders as E
from chada.models import create_model
from chada.models.batch import as_channel_batch
from chada.models.registry import list_models


@dataclasses.dataclass
class _Cfg:
    in_channels: int = 3
    depth: int = 1


class Tiny(nn.Module):
    """``forward_head(pool)``: ``[B, 1]``, each image's pixel sum times the pool's factor (cls 1,
    all 10, mean 100), through a matmul so that autocast makes it bf16. Records what each forward saw."""

    pools = ("cls", "all", "mean")
    factor = {"cls": 1.0, "all": 10.0, "mean": 100.0}

    def __init__(self, params: bool = True) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1, 1)) if params else None
        self.seen: list[dict[str, Any]] = []

    def forward_features(self, batch):  # noqa: ANN001, ANN201
        self.seen.append({"training": self.training, "autocast": torch.is_autocast_enabled("cpu"),
                          "device": batch.pixels.device, "dtype": torch.get_autocast_dtype("cpu")})  # fmt: skip
        sums = torch.stack([x.sum() for x in batch.split()])[:, None]
        return sums

    def forward_head(self, out, pool):  # noqa: ANN001, ANN201
        w = self.w if self.w is not None else torch.ones(1, 1)
        return torch.mm(out, w * self.factor[pool])


class DeviceProbe(nn.Module):
    """Records the device of the pixels it is given; its features are the channel counts (read on the
    host, so that it runs on the ``meta`` device, which holds no values)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))  # on the cpu
        self.devices: list[torch.device] = []

    def forward_features(self, batch):  # noqa: ANN001, ANN201
        self.devices.append(batch.pixels.device)
        return torch.tensor([[float(c)] for c in batch.host_counts])

    def forward_head(self, out, pool):  # noqa: ANN001, ANN201
        return out


def _batch() -> Any:
    return as_channel_batch([torch.full((2, 4, 4), 0.5), torch.full((1, 4, 4), 0.25)])  # sums 16 and 4


# -- ModelEncoder --------------------------------------------------------------------------------------


def test_model_encoder_runs_every_pool_once_in_eval_mode_as_float32() -> None:
    model = Tiny().train()
    out = E.ModelEncoder(model).encode_batch(_batch(), ["all", "cls"])
    assert list(out) == ["all", "cls"]
    np.testing.assert_array_equal(out["cls"], [[16.0], [4.0]])
    np.testing.assert_array_equal(out["all"], [[160.0], [40.0]])
    assert out["cls"].dtype == np.float32 and out["all"].dtype == np.float32
    assert model.seen == [{"training": False, "autocast": False, "device": torch.device("cpu"),
                           "dtype": torch.get_autocast_dtype("cpu")}]  # fmt: skip
    assert not model.training


def test_model_encoder_in_bf16_autocasts_but_returns_float32() -> None:
    model = Tiny()
    out = E.ModelEncoder(model, dtype=torch.bfloat16).encode_batch(_batch(), ["mean"], device="cpu")
    assert model.seen[0]["autocast"] and model.seen[0]["dtype"] == torch.bfloat16
    assert out["mean"].dtype == np.float32
    np.testing.assert_array_equal(out["mean"], [[1600.0], [400.0]])  # exact in bf16 too


def test_a_module_without_parameters_runs_on_the_cpu() -> None:
    model = Tiny(params=False)
    out = E.ModelEncoder(model).encode_batch(_batch(), ["cls"])
    np.testing.assert_array_equal(out["cls"], [[16.0], [4.0]])
    assert model.seen[0]["device"] == torch.device("cpu")


def _module(**attrs: Any) -> nn.Module:
    m = nn.Module()
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


def test_channel_limits_come_from_the_module() -> None:
    assert E.ModelEncoder(_module(max_channels=7)).max_channels == 7
    assert E.ModelEncoder(_module(max_channels=7.0)).max_channels is None  # not a channel count
    assert E.ModelEncoder(_module()).max_channels is None
    fixed = dict(arch_name="fixed_channel_vit", config=_Cfg(in_channels=3))
    assert E.ModelEncoder(_module(**fixed)).exact_channels == 3
    assert (
        E.ModelEncoder(_module(arch_name="fixed_channel_vit", config=_Cfg(in_channels=0))).exact_channels
        is None
    )
    assert E.ModelEncoder(_module(arch_name="chada_vit", config=_Cfg(in_channels=3))).exact_channels is None
    assert E.ModelEncoder(_module(arch_name="fixed_channel_vit")).exact_channels is None  # no config
    assert E.ModelEncoder(_module(config=_Cfg(in_channels=3))).exact_channels is None  # no arch


@pytest.mark.parametrize(
    "extra, size",
    [
        (None, None),
        ({}, None),
        ({"image_size": 16}, 16),
        ({"image_size": 1}, 1),
        ({"image_size": 0}, None),
        ({"image_size": "16"}, None),
        ({"image_size": 16, "pretrain_config": {"augment": {"global_size": 24}}}, 16),
        ({"pretrain_config": {"augment": {"global_size": 24}}}, 24),
        ({"pretrain_config": {"augment": None}}, None),
        ({"pretrain_config": None}, None),
    ],
)
def test_recorded_image_size(extra: dict | None, size: int | None) -> None:
    """The folder's ``image_size``, else the pretraining config's global view size; only a positive int."""
    module = _module() if extra is None else _module(pretrained_extra=extra)
    assert E.ModelEncoder(module).recorded_image_size == size


def test_fixed_pools_and_the_pool_map(caplog: pytest.LogCaptureFixture) -> None:
    model = Tiny()
    model.variable_size_pools = {"cls": "mean"}
    enc = E.ModelEncoder(model)
    assert [enc.fixed_pool(p) for p in ("cls", "all", "mean")] == ["mean", "all", "mean"]
    with pytest.raises(ValueError) as err:
        enc.fixed_pool("max")
    assert str(err.value) == "pool 'max' not supported by Tiny; choose from ('cls', 'all', 'mean')"
    # a module that names no pools takes the default ones, and None for no variable pools
    assert E.ModelEncoder(_module()).fixed_pool("cls") == "cls"  # no variable_size_pools at all
    bare = E.ModelEncoder(_module(variable_size_pools=None))
    assert bare.fixed_pool("all") == "all" and bare.pool_map(["cls"], {1, 2}) == {"cls": "cls"}
    with pytest.raises(ValueError) as err:
        bare.fixed_pool("mean")
    assert str(err.value) == "pool 'mean' not supported by Module; choose from ('cls', 'all')"
    with pytest.raises(ValueError) as err:
        bare.pool_map(["cls", "mean", "max"], {1})
    assert str(err.value) == "pool(s) ['mean', 'max'] not supported by Module; choose from ('cls', 'all')"

    with caplog.at_level(logging.WARNING, logger="chada.encode.encoders"):
        assert enc.pool_map(["cls", "all"], {3}) == {"cls": "cls", "all": "all"}
        assert not caplog.records
        assert enc.pool_map(["cls", "all"], {3, 1}) == {"cls": "mean", "all": "all"}
        assert enc.pool_map(["mean"], {3, 1}) == {"mean": "mean"}  # a pool only the module names
    assert [r.getMessage() for r in caplog.records] == [
        "pool 'cls' of Tiny concatenates one block per channel, but the images have [1, 3] channels: "
        "storing 'mean' (mean over channels) under 'cls' instead. Embed one dataset at a time "
        "(--dataset) for the concatenated form."
    ]


# -- FeatureKindEncoder ----------------------------------------------------------------------------------


def test_feature_kind_encoder_identity_and_refusals() -> None:
    enc = E.FeatureKindEncoder()
    assert (enc.kind, enc.layout, enc.columns) == ("handmade", "pooled", None)
    assert enc.info == {"model": "handmade", "family": "handmade", "source": "handmade", "arch": "handmade",
                        "kind": "handmade", "layout": "pooled"}  # fmt: skip
    tissue = E.FeatureKindEncoder("tissue")
    assert tissue.info["model"] == "tissue" and tissue.fixed_pool("cls") == "tissue"
    with pytest.raises(ValueError) as err:
        E.FeatureKindEncoder("sift")
    assert str(err.value) == f"unknown feature kind 'sift'; choose one of {extract.KINDS}"
    per = E.FeatureKindEncoder("handmade", "per_channel")
    assert per.pool_map(["cls", "all"], {3}) == {"cls": "cls", "all": "all"}
    assert enc.pool_map(["cls"], {1, 3}) == {"cls": "cls"}  # pooled: any channel counts
    with pytest.raises(ValueError) as err:
        per.pool_map(["cls"], {3, 1})
    assert str(err.value) == ("layout='per_channel' needs one fixed channel set, but the images have [1, 3] "
                              "channels; use layout='pooled'")  # fmt: skip


@pytest.fixture()
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``extract_features`` replaced: records its arguments, returns ``[N, 2]`` = (image index, channels)."""
    calls: list[dict[str, Any]] = []

    def fake(images, kind, layout="pooled", **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append({"images": images, "kind": kind, "layout": layout, **kw})
        x = np.array([[i + 0.5, im.shape[0]] for i, im in enumerate(images)], np.float64)
        return x, [f"{kind}_{len(calls)}_a", f"{kind}_{len(calls)}_b"]

    monkeypatch.setattr(extract, "extract_features", fake)
    return calls


def test_features_name_images_and_their_nuclear_channel(recorded: list[dict[str, Any]]) -> None:
    enc = E.FeatureKindEncoder("cellprofiler", "per_channel")
    samples = [
        {"image": torch.ones(2, 3, 3), "image_id": "a", "channel_names": ["Actin", "Hoechst 33342"]},
        {"image": np.zeros((1, 3, 3)), "image_id": "b", "channel_names": ["Actin"], "where": "row 2 (b.tif)"},
        {"image": [[[0.0]]], "image_id": "c"},
    ]
    x, cols = enc.features(samples)
    np.testing.assert_array_equal(x, [[0.5, 2], [1.5, 1], [2.5, 1]])
    assert cols == ["cellprofiler_1_a", "cellprofiler_1_b"] and enc.columns == cols
    [call] = recorded
    assert all(isinstance(im, np.ndarray) for im in call["images"])
    np.testing.assert_array_equal(call["images"][0], np.ones((2, 3, 3)))
    assert (call["kind"], call["layout"]) == ("cellprofiler", "per_channel")
    assert call["names"] == ["image 'a'", "row 2 (b.tif)", "image 'c'"]
    assert call["nuclear_channel"] == [1, "auto", "auto"]  # a named stain, else the pixel rule
    assert call["stains"] == ["none", "auto", "auto"]  # a nuclear stain: never RGB histology
    enc.features(samples[:1])
    assert enc.columns == ["cellprofiler_1_a", "cellprofiler_1_b"]  # named once, by the first call


def test_every_pool_gets_the_same_float32_features(recorded: list[dict[str, Any]]) -> None:
    enc = E.FeatureKindEncoder("shortcut")
    samples = [{"image": np.zeros((3, 2, 2)), "image_id": "a"}]
    out = enc.encode_samples(samples, {"cls": "cls", "all": "all"})
    assert list(out) == ["cls", "all"] and all(v.dtype == np.float32 for v in out.values())
    np.testing.assert_array_equal(out["all"], [[0.5, 3]])
    np.testing.assert_array_equal(out["cls"], out["all"])
    out = enc.encode_batch(_batch(), ["all"])
    assert list(out) == ["all"] and out["all"].dtype == np.float32
    np.testing.assert_array_equal(out["all"], [[0.5, 2], [1.5, 1]])
    call = recorded[-1]
    assert (call["kind"], call["layout"]) == ("shortcut", "pooled")
    np.testing.assert_array_equal(call["images"][0], np.full((2, 4, 4), 0.5, np.float32))
    assert [im.shape for im in call["images"]] == [(2, 4, 4), (1, 4, 4)]
    E.FeatureKindEncoder("cellprofiler", "per_channel").encode_batch(_batch(), ["cls"])
    assert (recorded[-1]["kind"], recorded[-1]["layout"]) == ("cellprofiler", "per_channel")


class _Rows:
    """A dataset of one row (``finish`` reads ``ds[0]`` when no chunk was computed in this run)."""

    def __init__(self) -> None:
        self.reads = 0

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i != 0:
            raise IndexError(i)
        self.reads += 1
        return {"image": np.zeros((2, 2, 2)), "image_id": f"r{i}"}


def test_finish_names_the_columns_and_the_shortcut_meta(recorded: list[dict[str, Any]]) -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    ds, info = _Rows(), {}
    meta = pd.DataFrame({"image_id": ["a", "b"], "n_channels": [2, 2]})
    hand = E.FeatureKindEncoder("handmade")
    hand.finish(ds, meta, info, {"cls": x})  # columns from one image, no meta column added
    assert ds.reads == 1 and info == {
        "feature_names": ["handmade_1_a", "handmade_1_b"],
        "note": "hand-made features: the same vector is stored under every pool name",
    }
    assert list(meta.columns) == ["image_id", "n_channels"]

    short = E.FeatureKindEncoder("shortcut")
    short.columns = ["n_channels", "cell_count"]  # computed in this run: ds is not read
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # n_channels is the manifest's own count: no warning for it
        short.finish(ds, meta, info, {"cls": x})
    assert ds.reads == 1 and info["feature_names"] == ["n_channels", "cell_count"]
    assert meta["cell_count"].tolist() == [2.0, 4.0] and meta["n_channels"].tolist() == [1.0, 3.0]
    assert meta["cell_count"].dtype == np.float64

    short.columns = ["image_id", "cell_count", "p99"]
    with pytest.warns(UserWarning) as caught:
        short.finish(ds, meta, info, {"cls": np.array([[5, 6, 7], [8, 9, 10]], np.float32)})
    assert [str(w.message) for w in caught] == [
        "manifest columns ['image_id', 'cell_count'] are replaced by the shortcut features of the same name "
        "in the meta"
    ]
    assert meta["p99"].tolist() == [7.0, 10.0] and meta["image_id"].tolist() == [5.0, 8.0]


# -- resolve_model, resolve_encoder, embed_images ----------------------------------------------------------


def test_resolve_a_module() -> None:
    module = Tiny()
    module.config = _Cfg(in_channels=2, depth=4)
    got, info = E.resolve_model(module)
    assert got is module
    assert info == {"model": "Tiny", "source": "module", "model_name": None, "arch": "Tiny",
                    "config": {"in_channels": 2, "depth": 4}, "num_params": 1}  # fmt: skip
    named = _module(model_name="mine", arch_name="chada_vit", config={"not": "a dataclass"})
    named.lin = nn.Linear(3, 2)  # 6 weights + 2 biases
    _, info = E.resolve_model(named)
    assert info == {"model": "mine", "source": "module", "model_name": "mine", "arch": "chada_vit",
                    "config": None, "num_params": 8}  # fmt: skip


def test_resolve_names_folders_and_handmade(tmp_path: Any) -> None:
    assert E.resolve_model("handmade") == (None, E.FeatureKindEncoder().info)
    # by default a registered name's random weights come from seed 0
    assert (
        E.resolve_model("chada_vit_test")[1]["seed"] == 0
        and E.resolve_encoder("chada_vit_test").info["seed"] == 0
    )
    torch.manual_seed(1)
    a, info = E.resolve_model("chada_vit_test", seed=5)
    assert {k: info[k] for k in ("model", "source", "untrained", "seed", "arch")} == {
        "model": "chada_vit_test", "source": "random_init", "untrained": True, "seed": 5, "arch": "chada_vit"}  # fmt: skip
    torch.manual_seed(2)  # the seed given, not the global state, makes the weights
    b, _ = E.resolve_model("chada_vit_test", seed=5)
    torch.manual_seed(5)
    ref = create_model("chada_vit_test")
    for pa, pb, pr in zip(a.parameters(), b.parameters(), ref.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pr)
    a.save_pretrained(tmp_path / "m")
    loaded, info = E.resolve_model(tmp_path / "m", seed=9)
    assert info["model"] == str((tmp_path / "m").resolve()) and info["source"] == "pretrained"
    assert info["seed"] is None and "untrained" not in info and info["model_name"] == a.model_name
    assert all(torch.equal(p, q) for p, q in zip(loaded.parameters(), a.parameters()))
    with pytest.raises(FileNotFoundError) as err:
        E.resolve_model(tmp_path / "nothing")
    assert str(err.value) == (
        f"{str(tmp_path / 'nothing')!r} is neither a saved model folder, a registered model name "
        f"({', '.join(list_models())}), nor 'handmade'"
    )


def test_resolve_encoder() -> None:
    stub = E.FeatureKindEncoder("tissue")
    assert E.resolve_encoder(stub) is stub
    hand = E.resolve_encoder("handmade")
    assert type(hand) is E.FeatureKindEncoder and hand.kind == "handmade"
    module = Tiny()
    enc = E.resolve_encoder(module, seed=3, dtype=torch.bfloat16)
    assert type(enc) is E.ModelEncoder and enc.module is module and enc.dtype == torch.bfloat16
    assert enc.info["source"] == "module" and enc.info["num_params"] == 1
    assert E.resolve_encoder(module).dtype == torch.float32
    torch.manual_seed(0)
    named = E.resolve_encoder("chada_vit_test", seed=6)
    assert named.info["seed"] == 6 and named.info["model"] == "chada_vit_test"


def test_embed_images(recorded: list[dict[str, Any]]) -> None:
    model = Tiny()
    out = E.embed_images(model, [torch.full((2, 4, 4), 0.5), torch.full((1, 4, 4), 0.25)], ("cls", "mean"),
                         device="cpu", dtype=torch.bfloat16)  # fmt: skip
    np.testing.assert_array_equal(out["cls"], [[16.0], [4.0]])
    np.testing.assert_array_equal(out["mean"], [[1600.0], [400.0]])
    assert model.seen[-1]["autocast"] and model.seen[-1]["dtype"] == torch.bfloat16
    out = E.embed_images(model, torch.ones(1, 3, 2, 2), iter(["all"]))  # a one-shot iterable of pools
    np.testing.assert_array_equal(out["all"], [[120.0]])
    assert not model.seen[-1]["autocast"]
    out = E.embed_images("handmade", [torch.ones(2, 4, 4)], ["cls", "all"])
    np.testing.assert_array_equal(out["cls"], [[0.5, 2]])
    assert recorded[-1]["kind"] == "handmade" and list(out) == ["cls", "all"]
    probe = DeviceProbe()
    assert E.embed_images(probe, [torch.ones(2, 4, 4)], ["cls"], device="meta")["cls"].tolist() == [[2.0]]
    assert probe.devices == [torch.device("meta")]  # the device asked for, not the module's (cpu)
    with pytest.raises(ValueError) as err:
        E.embed_images(model, torch.ones(1, 3, 2, 2), [])
    assert str(err.value) == "pools is empty: ask for at least one of 'cls', 'all'"
    with pytest.raises(TypeError) as err:
        E.embed_images("chada_vit_test", torch.ones(1, 3, 2, 2))
    assert str(err.value) == "embed_images takes a model or 'handmade', got the string 'chada_vit_test'"
    with pytest.raises(TypeError) as err:
        E.embed_images(3, torch.ones(1, 3, 2, 2))  # type: ignore[arg-type]
    assert str(err.value) == "model must be an nn.Module or 'handmade', got int"
