"""Model folders (``save_pretrained`` / ``load_model``) and the registry, field by field and message by
message: what config.json holds, what a damaged folder is told, how names and overrides resolve."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import chada
from chada.models import registry
from chada.models.chada_vit import ChAdaViT, ChAdaViTConfig
from chada.models.hub import check_finite, load_model, save_pretrained


def _model(**kw):
    torch.manual_seed(0)
    return chada.create_model("chada_vit_test", **kw)


def test_saved_folder_layout(tmp_path) -> None:
    model = _model(max_channels=4)
    out = model.save_pretrained(tmp_path / "a" / "b", extra={"channel_vocab": ["DAPI"], "epoch": 3})
    assert out == tmp_path / "a" / "b"  # parent folders are created
    text = (out / "config.json").read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta, indent=2) + "\n"
    assert meta == {
        "arch": "chada_vit",
        "model_name": "chada_vit_test",
        "config": json.loads(json.dumps(model.config.__dict__)),
        "format": "chada/1",
        "extra": {"channel_vocab": ["DAPI"], "epoch": 3},
    }
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(model.state_dict())
    # saving again into the same folder replaces it; without extra, config.json has no "extra" entry
    save_pretrained(model, out)
    assert "extra" not in json.loads((out / "config.json").read_text())
    loaded = load_model(out)
    assert loaded.pretrained_extra == {} and loaded.model_name == "chada_vit_test"
    # a model built from its class has no registered name
    bare = ChAdaViT(ChAdaViTConfig(embed_dim=16, depth=1, num_heads=2, patch_size=8, img_size=16))
    bare.save_pretrained(tmp_path / "bare")
    assert json.loads((tmp_path / "bare" / "config.json").read_text())["model_name"] is None
    assert load_model(tmp_path / "bare").model_name is None


def test_extra_and_overrides_round_trip(tmp_path) -> None:
    model = _model()
    model.save_pretrained(tmp_path / "m", extra={"which": "teacher"})
    loaded = ChAdaViT.from_pretrained(tmp_path / "m", attention="padded")
    assert loaded.pretrained_extra == {"which": "teacher"}
    assert loaded.attention_mode == "padded" and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_registered_names_load_with_overrides() -> None:
    model = load_model("chada_vit_test", max_channels=3, attention="varlen")
    assert isinstance(model, ChAdaViT) and model.config.max_channels == 3 and model.attention_mode == "varlen"
    assert model.model_name == "chada_vit_test"
    with pytest.raises(FileNotFoundError) as err:
        load_model("chada_vit_huge")
    assert str(err.value) == (
        "'chada_vit_huge' is neither a saved model folder nor a registered model name "
        f"({', '.join(chada.list_models())})"
    )


def test_damaged_folders_are_named(tmp_path) -> None:
    _model().save_pretrained(tmp_path / "m")
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors is a file; pass the folder holding config\.json and model\.safetensors$",
    ):
        load_model(tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"model\.safetensors not found: the model folder has no weights; re-save or copy it again$",
    ):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found: not a saved chada model folder$"):
        load_model(tmp_path / "m")


def test_unreadable_weights_message_without_error_text(tmp_path, monkeypatch) -> None:
    import safetensors.torch

    _model().save_pretrained(tmp_path / "m")

    def fail(*a, **k):
        raise OSError()

    monkeypatch.setattr(safetensors.torch, "load_file", fail)
    with pytest.raises(
        ValueError, match=r"is not a readable safetensors file \(OSError\): it is truncated or corrupt"
    ):
        load_model(tmp_path / "m")


def test_unreadable_weights_message_quotes_the_first_line(tmp_path) -> None:
    _model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00\xff" * 500)
    with pytest.raises(
        ValueError, match=r"safetensors file \(Error while deserializing header: [^)\n]+\): it is truncated"
    ):
        load_model(tmp_path / "m")


def _edit_weights(folder, edit) -> None:
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


def test_unexpected_tensor_alone_is_refused(tmp_path) -> None:
    _model().save_pretrained(tmp_path / "m")
    _edit_weights(tmp_path / "m", lambda s: s.update({"head.weight": torch.zeros(2)}))
    with pytest.raises(
        ValueError,
        match=r"do not match chada_vit as configured in config\.json: missing=\[\] unexpected=\['head\.weight'\]$",
    ):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("n_wrong", [5, 6])
def test_shape_mismatches_list_five_then_count(tmp_path, n_wrong: int) -> None:
    _model().save_pretrained(tmp_path / "m")
    names = [f"blocks.{i}.{p}" for i in range(2) for p in ("norm1.weight", "norm1.bias", "norm2.weight")][
        :n_wrong
    ]
    _edit_weights(tmp_path / "m", lambda s: s.update({n: torch.zeros(3) for n in names}))
    with pytest.raises(ValueError) as err:
        load_model(tmp_path / "m")
    msg = str(err.value)
    listed = msg.split("config.json: ", 1)[1].split(". config.json and")[0].split("; ")
    assert len(listed) == 5 + (n_wrong > 5)  # five tensors named, then "and N more" only past five
    assert set(listed[:5]) <= {f"{n} (3,) (config wants (32,))" for n in names}
    assert listed[5:] == (["and 1 more"] if n_wrong == 6 else [])
    assert msg.endswith(". config.json and model.safetensors come from different models")


def test_check_finite_counts_the_other_tensors() -> None:
    good = torch.zeros(3)
    check_finite({"a": good, "steps": 3, "ids": torch.arange(3)}, "ckpt")
    with pytest.raises(ValueError) as err:
        check_finite({"a": good, "b": torch.tensor([1.0, float("nan"), float("inf")])}, "ckpt")
    assert str(err.value) == (
        "ckpt: NaN or inf weights in b (2 of 3 values); the checkpoint is damaged or its training diverged: "
        "use an earlier checkpoint"
    )
    with pytest.raises(ValueError, match=r"in b \(1 of 1 values\) and 2 more tensors;"):
        check_finite(
            {
                "b": torch.tensor([float("nan")]),
                "c": torch.tensor([float("inf")]),
                "d": torch.tensor([float("-inf")]),
            },
            "x",
        )


def test_num_params_trainable_only() -> None:
    model = _model()
    total = sum(p.numel() for p in model.parameters())
    frozen = model.pos_embed.numel() + model.cls_token.numel()
    model.pos_embed.requires_grad_(False)
    model.cls_token.requires_grad_(False)
    assert model.num_params() == total
    assert model.num_params(trainable_only=True) == total - frozen


# ---------------------------------------------------------------------------------------- registry


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry's tables, copied: registrations made by a test do not outlive it."""
    monkeypatch.setattr(registry, "_ARCHS", dict(registry._ARCHS))
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


@dataclass
class _TinyConfig:
    width: int = 2


class _Tiny(torch.nn.Module):
    config_class = _TinyConfig

    def __init__(self, config: _TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.lin = torch.nn.Linear(config.width, 1)


def test_register_arch_and_model(scratch_registry) -> None:
    cls = registry.register_arch("tiny_test_arch")(_Tiny)
    assert cls is _Tiny and _Tiny.arch_name == "tiny_test_arch"
    assert registry.get_arch("tiny_test_arch") is _Tiny
    registry.register_arch("tiny_test_arch")(_Tiny)  # the same class again is fine (module reloads)

    class Other(_Tiny):
        pass

    with pytest.raises(ValueError, match=r"^architecture 'tiny_test_arch' registered twice$"):
        registry.register_arch("tiny_test_arch")(Other)
    config = {"width": 3}
    registry.register_model("tiny_three", "tiny_test_arch", "three wide", **config)
    config["width"] = 5  # the registry keeps its own copy
    assert registry.model_spec("tiny_three") == ("tiny_test_arch", {"width": 3}, "three wide")
    assert "tiny_three" in registry.list_models() and registry.list_models() == sorted(registry.list_models())
    model = registry.create_model("tiny_three")
    assert isinstance(model, _Tiny) and model.config.width == 3 and model.model_name == "tiny_three"
    assert registry.create_model("tiny_three", width=4).lin.in_features == 4
    registry.model_spec("tiny_three")[1]["width"] = 9  # a copy again
    assert registry.create_model("tiny_three").config.width == 3
    with pytest.raises(ValueError, match=r"^model 'tiny_three' registered twice$"):
        registry.register_model("tiny_three", "tiny_test_arch")
    registry.register_model("tiny_default", "tiny_test_arch")
    assert registry.model_spec("tiny_default") == ("tiny_test_arch", {}, "")


def test_registry_errors_list_what_is_known(scratch_registry) -> None:
    with pytest.raises(ValueError) as err:
        registry.model_spec("nope")
    assert str(err.value) == f"unknown model 'nope'; registered: {', '.join(registry.list_models())}"
    with pytest.raises(ValueError) as err:
        registry.get_arch("nope")
    assert str(err.value) == f"unknown architecture 'nope'; known: {sorted(registry._ARCHS)}"
    with pytest.raises(TypeError, match=r"^unknown config keys for chada_vit: \['depthh'\]; valid: \["):
        registry.build_from_config("chada_vit", {"depthh": 2})
