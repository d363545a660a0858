"""The authors' released weights: key conversion, strict loading, and exact numerical agreement.

A state dict is built in exactly the authors' layout (Lightning prefixes, their shapes), converted
through the ``chada convert`` CLI, loaded with ``chada.load_model``, and the CLS output is compared to
an independent plain-PyTorch evaluation of the authors' equations written below (their padded layout,
zero tokens for missing channels, key-padding mask, post-norm blocks with norm1 applied twice, DINO's
+0.1 positional interpolation).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from chada import cli
from chada.models.convert import (
    convert_official_state_dict,
    load_official_checkpoint,
    read_checkpoint,
    select_official_backbone,
)
from chada.models.hub import load_model

D, DEPTH, HIDDEN, P, CMAX, GRID = 192, 12, 2048, 16, 10, 14
HEADS = 12  # chada_vit_moyen_official's default


def official_backbone(seed: int) -> dict[str, torch.Tensor]:
    """Random tensors with the authors' names and shapes; scales keep activations O(1) so attention is
    neither uniform nor saturated and LayerNorm affine parameters are far from (1, 0)."""
    g = torch.Generator().manual_seed(seed)

    def rn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    sd = {
        "token_learner.proj.weight": rn(D, 1, P, P, std=1 / P),
        "token_learner.proj.bias": rn(D, std=0.1),
        "cls_token": rn(1, 1, D, std=0.5),
        "channel_token": rn(1, CMAX, 1, D, std=0.5),
        "pos_embed": rn(1, 1, GRID * GRID + 1, D, std=0.5),
        "norm.weight": 1 + rn(D, std=0.2),
        "norm.bias": rn(D, std=0.2),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd |= {
            b + "self_attn.in_proj_weight": rn(3 * D, D, std=D**-0.5),
            b + "self_attn.in_proj_bias": rn(3 * D, std=0.1),
            b + "self_attn.out_proj.weight": rn(D, D, std=D**-0.5),
            b + "self_attn.out_proj.bias": rn(D, std=0.1),
            b + "linear1.weight": rn(HIDDEN, D, std=D**-0.5),
            b + "linear1.bias": rn(HIDDEN, std=0.1),
            b + "linear2.weight": rn(D, HIDDEN, std=HIDDEN**-0.5),
            b + "linear2.bias": rn(D, std=0.1),
            b + "norm1.weight": 1 + rn(D, std=0.2),
            b + "norm1.bias": rn(D, std=0.2),
            b + "norm2.weight": 1 + rn(D, std=0.2),
            b + "norm2.bias": rn(D, std=0.2),
        }
    return sd


def lightning_state_dict() -> dict[str, torch.Tensor]:
    """Student under ``backbone.``, teacher under ``momentum_backbone.``, plus DINO head keys."""
    sd = {f"backbone.{k}": v for k, v in official_backbone(0).items()}
    sd |= {f"momentum_backbone.{k}": v for k, v in official_backbone(1).items()}
    sd |= {
        "projector.0.weight": torch.randn(2048, D),
        "projector.6.weight_g": torch.randn(4096, 1),
        "momentum_projector.0.weight": torch.randn(2048, D),
        "classifier.weight": torch.randn(5, D),
    }
    return sd


# ------------------------------------------------------------- the authors' equations, independently
def reference_pos(pos_embed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[h*w, D]`` patch positions as the authors compute them (DINO's scale factor with +0.1)."""
    n = pos_embed.shape[2] - 1
    patch = pos_embed[0, 0, 1:]
    if h * w == n and h == w:
        return patch
    s = int(math.sqrt(n))
    grid = patch.reshape(1, s, s, D).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid, scale_factor=((h + 0.1) / math.sqrt(n), (w + 0.1) / math.sqrt(n)), mode="bicubic"
    )
    assert grid.shape[-2:] == (h, w)
    return grid.permute(0, 2, 3, 1).reshape(h * w, D)


def reference_cls(
    sd: dict[str, torch.Tensor], images: list[torch.Tensor], heads: int = HEADS, pad_to: int | None = None
) -> torch.Tensor:
    """CLS embeddings ``[B, D]`` of a batch of ``[C_i, H, W]`` images, authors' padded layout.

    The authors pad every image to ``C_max = 10`` channels; ``pad_to=None`` pads to the batch's largest
    count instead, which is the same computation (padded keys are masked, padded queries feed nothing
    real) at a fraction of the cost for 1- and 3-channel images.
    """
    pad_to = pad_to or max(im.shape[0] for im in images)
    H, W = images[0].shape[1:]
    h, w = H // P, W // P
    N = h * w
    pixels = torch.cat(images)[:, None]  # [sum C_i, 1, H, W]
    tok = F.conv2d(pixels, sd["token_learner.proj.weight"], sd["token_learner.proj.bias"], stride=P)
    tok = tok.flatten(2).transpose(1, 2)  # [sum C_i, N, D]
    chunks = torch.split(tok, [im.shape[0] for im in images])
    padded = torch.stack(
        [torch.cat([c, c.new_zeros(pad_to - c.shape[0], N, D)]) for c in chunks]
    )  # [B, pad_to, N, D]
    B = padded.shape[0]
    pad_mask = (padded.reshape(B, pad_to * N, D) == 0).all(-1)  # their rule: all-zero token = padding
    x = padded + reference_pos(sd["pos_embed"], h, w)[None, None] + sd["channel_token"][:, :pad_to]
    cls = sd["cls_token"] + sd["pos_embed"][:, :, 0]
    x = torch.cat([cls.expand(B, 1, D), x.reshape(B, pad_to * N, D)], dim=1)
    pad_mask = torch.cat([pad_mask.new_zeros(B, 1), pad_mask], dim=1)

    def ln(t: torch.Tensor, name: str, eps: float) -> torch.Tensor:
        return F.layer_norm(t, (D,), sd[name + ".weight"], sd[name + ".bias"], eps)

    for i in range(DEPTH):
        b = f"blocks.{i}."
        q = ln(x, b + "norm1", 1e-5).transpose(0, 1)  # [L, B, D]
        attn, _ = F.multi_head_attention_forward(
            q, q, q, D, heads,
            sd[b + "self_attn.in_proj_weight"], sd[b + "self_attn.in_proj_bias"],
            None, None, False, 0.0,
            sd[b + "self_attn.out_proj.weight"], sd[b + "self_attn.out_proj.bias"],
            training=False, key_padding_mask=pad_mask, need_weights=False,
        )  # fmt: skip
        x = ln(x + attn.transpose(0, 1), b + "norm1", 1e-5)
        ff = F.linear(
            F.relu(F.linear(x, sd[b + "linear1.weight"], sd[b + "linear1.bias"])),
            sd[b + "linear2.weight"],
            sd[b + "linear2.bias"],
        )
        x = ln(x + ff, b + "norm2", 1e-5)
    return ln(x, "norm", 1e-6)[:, 0]


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ckpt_sd() -> dict[str, torch.Tensor]:
    return lightning_state_dict()


@pytest.fixture(scope="module")
def student_sd(ckpt_sd) -> dict[str, torch.Tensor]:
    return {k[len("backbone.") :]: v for k, v in ckpt_sd.items() if k.startswith("backbone.")}


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, ckpt_sd):
    tmp = tmp_path_factory.mktemp("official")
    ckpt = tmp / "chadavit.ckpt"
    lightning = {"epoch": 399, "global_step": 1, "pytorch-lightning_version": "2.0.2", "state_dict": ckpt_sd}
    torch.save(lightning, ckpt)
    out = tmp / "converted"
    assert cli.main(["convert", str(ckpt), str(out), "--student", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def converted(converted_dir):
    return load_model(converted_dir)


_REF_CACHE: dict[tuple, torch.Tensor] = {}


def _images(channels: list[int], size: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, size, size, generator=g) for c in channels]


def _reference(student_sd, channels: list[int], size: int, heads: int = HEADS):
    """``(images, reference CLS [B, D])``, the reference cached across tests and attention modes."""
    images = _images(channels, size)
    key = (tuple(channels), size, heads)
    if key not in _REF_CACHE:
        _REF_CACHE[key] = reference_cls(student_sd, images, heads=heads)
    return images, _REF_CACHE[key]


# 224 is the training size (stored positions used as is); 112 goes through the +0.1 interpolation.
# The 10-channel and mixed batches at 224 (1961 tokens per image) are the slow ones.
# The padded mode always pads to C_max = 10 (1961 tokens at 224), so at 224 only the packed mode of
# the 1- and 3-channel images runs by default; at 112 both modes run (the mixed batch holds a
# 10-channel image, so it is padded to 10 in both the reference and the padded mode).
SLOW = pytest.mark.slow
CASES = [
    pytest.param([1], 224, "packed", id="1ch-224-packed"),
    pytest.param([3], 224, "packed", id="3ch-224-packed"),
    pytest.param([1], 112, "padded", id="1ch-112-padded"),
    pytest.param([3], 112, "padded", id="3ch-112-padded"),
    pytest.param([10], 112, "padded", id="10ch-112-padded", marks=SLOW),  # a 10-ch image pads nothing
    pytest.param([10], 112, "packed", id="10ch-112-packed"),
    pytest.param([3, 1, 10, 2], 112, "padded", id="mixed-112-padded"),
    pytest.param([3, 1, 10, 2], 112, "packed", id="mixed-112-packed"),
    pytest.param([1], 224, "padded", id="1ch-224-padded", marks=SLOW),
    pytest.param([3], 224, "padded", id="3ch-224-padded", marks=SLOW),
    pytest.param([10], 224, "padded", id="10ch-224-padded", marks=SLOW),
    pytest.param([10], 224, "packed", id="10ch-224-packed", marks=SLOW),
    pytest.param([3, 1, 10, 2], 224, "padded", id="mixed-224-padded", marks=SLOW),
    pytest.param([3, 1, 10, 2], 224, "packed", id="mixed-224-packed", marks=SLOW),
]


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("channels", "size", "mode"), CASES)
@torch.no_grad()
def test_cls_matches_authors_equations(converted, student_sd, mode, channels, size):
    images, ref = _reference(student_sd, channels, size)
    ours = converted.set_attention(mode)(images)
    assert ours.shape == (len(channels), D)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_other_image_size_needs_the_dino_interpolation(converted, student_sd):
    """At 112 px the timm-style resize (size=, antialias) is measurably different from the authors'."""
    images, ref = _reference(student_sd, [3, 1, 10, 2], 112)
    assert converted.config.pos_interpolation == "dino_bicubic"
    try:
        converted.config.pos_interpolation = "bicubic"
        assert (converted(images) - ref).abs().max() > 1e-3
    finally:
        converted.config.pos_interpolation = "dino_bicubic"


def test_teacher_and_student_pick_their_tensors(ckpt_sd, converted, tmp_path):
    ckpt = tmp_path / "t.ckpt"
    torch.save({"state_dict": ckpt_sd}, ckpt)
    assert cli.main(["convert", str(ckpt), str(tmp_path / "teacher"), "--teacher", "--quiet"]) == 0
    teacher = load_model(tmp_path / "teacher").state_dict()
    student = converted.state_dict()
    for ours, official in [
        ("blocks.7.mlp.fc1.weight", "blocks.7.linear1.weight"),
        ("cls_token", "cls_token"),
    ]:
        assert torch.equal(teacher[ours], ckpt_sd["momentum_backbone." + official])
        assert torch.equal(student[ours], ckpt_sd["backbone." + official])
    assert torch.equal(teacher["channel_embed"], ckpt_sd["momentum_backbone.channel_token"][0, :, 0])
    assert torch.equal(student["pos_embed"], ckpt_sd["backbone.pos_embed"][:, 0])
    assert not torch.equal(teacher["blocks.0.attn.qkv.weight"], student["blocks.0.attn.qkv.weight"])


def test_bare_state_dicts_with_and_without_prefix(ckpt_sd):
    with_prefix = {k: v for k, v in ckpt_sd.items() if k.startswith("momentum_backbone.")}
    bare = {k[len("momentum_backbone.") :]: v for k, v in with_prefix.items()}
    a = convert_official_state_dict(with_prefix, "teacher")
    b = convert_official_state_dict(bare)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["blocks.0.attn.qkv.weight"].shape == (3 * D, D)
    assert a["pos_embed"].shape == (1, GRID * GRID + 1, D) and a["channel_embed"].shape == (CMAX, D)
    # Asking for a backbone the file does not hold is an error, not a silent swap.
    with pytest.raises(ValueError, match="no student backbone"):
        select_official_backbone(with_prefix, "student")
    with pytest.raises(ValueError, match="which must be"):
        select_official_backbone(bare, "ema")


def test_missing_key_is_named(ckpt_sd):
    sd = dict(ckpt_sd)
    del sd["backbone.blocks.3.linear1.bias"]
    with pytest.raises(ValueError, match=r"backbone\.blocks\.3\.linear1\.bias"):
        load_official_checkpoint(sd, "student")
    del sd["backbone.channel_token"]
    with pytest.raises(ValueError, match=r"channel_token.*|.*channel_embed"):
        load_official_checkpoint(sd, "student")


def test_unexpected_key_is_named(ckpt_sd, tmp_path, capsys):
    sd = dict(ckpt_sd)
    sd["backbone.blocks.0.self_attn.bias_k"] = torch.zeros(1, 1, D)
    with pytest.raises(ValueError, match=r"backbone\.blocks\.0\.self_attn\.bias_k"):
        load_official_checkpoint(sd, "student")
    # Through the CLI: exit code 2 and the key in the message; nothing written.
    ckpt = tmp_path / "bad.ckpt"
    torch.save({"state_dict": sd}, ckpt)
    assert cli.main(["convert", str(ckpt), str(tmp_path / "out")]) == 2
    assert "bias_k" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()
    # A depth mismatch (an extra block) is unexpected too, in our naming.
    sd2 = dict(ckpt_sd)
    sd2 |= {
        k.replace("blocks.11.", "blocks.12."): v
        for k, v in ckpt_sd.items()
        if k.startswith("backbone.blocks.11.")
    }
    with pytest.raises(ValueError, match=r"blocks\.12\."):
        load_official_checkpoint(sd2, "student")


def test_shape_mismatch_is_named(ckpt_sd):
    sd = dict(ckpt_sd)
    sd["backbone.blocks.2.linear1.weight"] = torch.zeros(1024, D)
    with pytest.raises(ValueError, match=r"blocks\.2\.mlp\.fc1\.weight"):
        load_official_checkpoint(sd, "student")


class _HyperParams:
    """Stands for an OmegaConf config pickled into a Lightning checkpoint."""

    def __init__(self) -> None:
        self.lr = 1e-4
        self.name = "dino"


def test_checkpoint_with_pickled_objects_is_read_without_running_them(ckpt_sd, tmp_path):
    small = {k: v for k, v in ckpt_sd.items() if k.startswith("backbone.")}
    ckpt = tmp_path / "hp.ckpt"
    torch.save(
        {"state_dict": small, "hyper_parameters": {"cfg": _HyperParams()}, "hparams_name": "cfg"}, ckpt
    )
    with pytest.raises(Exception):  # noqa: B017 - the point is that the strict loader refuses it
        torch.load(ckpt, weights_only=True)
    obj = read_checkpoint(ckpt)
    assert type(obj["hyper_parameters"]["cfg"]).__module__.startswith("chada.opaque")
    assert torch.equal(obj["state_dict"]["backbone.cls_token"], small["backbone.cls_token"])
    model = load_official_checkpoint(ckpt, "student")
    assert torch.equal(model.cls_token, small["backbone.cls_token"])


def test_cli_safetensors_num_heads_and_overwrite(student_sd, tmp_path, capsys):
    """A bare .safetensors state dict converts; ``--num-heads 2`` (the authors' later factory) is honoured
    and matters: the weights cannot tell 2 heads from 12, the embeddings can."""
    from safetensors.torch import save_file

    bare = {k: v.contiguous() for k, v in student_sd.items()}
    st = tmp_path / "bare.safetensors"
    save_file(bare, str(st))
    out = tmp_path / "m"
    assert cli.main(["convert", str(st), str(out), "--num-heads", "2"]) == 0
    printed = capsys.readouterr().out
    assert "token_learner.proj.weight" in printed and "patch_embed.proj.weight" in printed
    assert "heads=2" in printed
    model = load_model(out)
    assert model.config.num_heads == 2 and model.config.pos_interpolation == "dino_bicubic"
    assert model.pretrained_extra["which"] == "student"
    with torch.no_grad():
        images, ref2 = _reference(student_sd, [2], 64, heads=2)
        _, ref12 = _reference(student_sd, [2], 64, heads=12)
        ours = model(images)
    torch.testing.assert_close(ours, ref2, atol=1e-5, rtol=0)
    assert (ours - ref12).abs().max() > 1e-3
    assert cli.main(["convert", str(st), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main(["convert", str(st), str(out), "--force", "--quiet"]) == 0


def test_nan_weights_are_refused_naming_the_official_tensor(ckpt_sd, tmp_path, capsys):
    sd = dict(ckpt_sd)
    bad = sd["backbone.blocks.4.linear2.weight"].clone()
    bad[0, 0] = float("nan")
    sd["backbone.blocks.4.linear2.weight"] = bad
    with pytest.raises(
        ValueError, match=r"NaN or inf weights in backbone\.blocks\.4\.linear2\.weight \(1 of"
    ):
        load_official_checkpoint(sd, "student")
    # The teacher is another tensor set: a NaN in the student does not block converting the teacher.
    load_official_checkpoint(sd, "teacher")
    ckpt = tmp_path / "nan.ckpt"
    torch.save({"state_dict": sd}, ckpt)
    assert cli.main(["convert", str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nan.ckpt" in err and "linear2.weight" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_corrupt_safetensors_checkpoint_is_a_clean_error(student_sd, tmp_path, capsys):
    from safetensors.torch import save_file

    f = tmp_path / "weights.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in student_sd.items()}, str(f))
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"weights\.safetensors is not a readable safetensors file"):
        read_checkpoint(f)
    assert cli.main(["convert", str(f), str(tmp_path / "out")]) == 2
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------ details pinned by mutation testing
@pytest.mark.parametrize("content", [b"hello world", b"", b"PK\x03\x04 not a zip"])
def test_unreadable_checkpoint_is_a_clean_error(tmp_path, capsys, content):
    """A text file, an empty file or a broken zip: one ValueError naming the file (exit 2 from the
    CLI), whatever the unpickler raised (KeyError and EOFError used to escape as internal errors)."""
    f = tmp_path / "w.ckpt"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=r"could not read .*w\.ckpt as a torch checkpoint: \w+") as err:
        read_checkpoint(f)
    cause = err.value.__cause__  # the unpickler's own error, named by its type then its text
    assert str(err.value).endswith(f" as a torch checkpoint: {type(cause).__name__}: {cause}")
    assert cli.main(["convert", str(f), str(tmp_path / "out")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"^checkpoint .*missing\.ckpt not found$"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_fallback_failure_message(tmp_path, monkeypatch):
    import pickle

    calls = []

    def fake_load(path, map_location=None, weights_only=None, pickle_module=None):
        calls.append((map_location, weights_only, pickle_module))
        if weights_only:
            raise pickle.UnpicklingError("Weights only load failed.\nsecond line")
        raise RuntimeError("boom")

    monkeypatch.setattr(torch, "load", fake_load)
    f = tmp_path / "x.ckpt"
    f.write_bytes(b"x")
    with pytest.raises(ValueError) as err:
        read_checkpoint(f)
    assert str(err.value) == (
        f"could not read {f}: the weights-only loader refused it (Weights only load failed.) and the "
        "tensors-only fallback failed (RuntimeError: boom). In the authors' environment, save just the "
        "weights with: torch.save(torch.load(CKPT, map_location='cpu')['state_dict'], 'state_dict.pt') "
        "and convert that file."
    )
    assert calls[0] == ("cpu", True, None) and calls[1][:2] == ("cpu", False)


@pytest.mark.parametrize(
    "error, shown", [(OSError(), "OSError"), (ValueError("header too large\nat byte 8"), "header too large")]
)
def test_safetensors_read_error_message(tmp_path, monkeypatch, error, shown):
    """The reader's error: its first line, or its type when it has no text."""
    import safetensors.torch

    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(safetensors.torch, "load_file", fail)
    with pytest.raises(ValueError) as err:
        read_checkpoint(f)
    assert str(err.value) == (
        f"{f} is not a readable safetensors file ({shown}): it is truncated or corrupt; download or copy it again"
    )


class half:  # noqa: N801 - a foreign class that happens to share a torch dtype's name
    def __init__(self) -> None:
        self.x = 1


class _Args:
    def __reduce__(self):
        return (_Args, (1, "two"))


class HyperStorage:
    """A foreign class whose name ends like a torch storage's."""


def test_tensors_only_unpickler_rebuilds_only_tensors_and_dtypes(ckpt_sd, tmp_path):
    small = {k: v for k, v in ckpt_sd.items() if k.startswith("backbone.")}
    ckpt = tmp_path / "hp.ckpt"
    hp = {
        "cfg": _HyperParams(),
        "dtype": torch.bfloat16,
        "half": half(),
        "args": _Args(),
        "foreign": HyperStorage(),
    }
    torch.save({"state_dict": small, "hyper_parameters": hp}, ckpt)
    obj = read_checkpoint(ckpt)["hyper_parameters"]
    assert obj["dtype"] is torch.bfloat16  # torch's own dtypes resolve
    assert type(obj["cfg"]).__module__ == f"chada.opaque.{_HyperParams.__module__}"
    assert type(obj["cfg"]).__name__ == "_HyperParams" and obj["cfg"]._state == {"lr": 1e-4, "name": "dino"}
    assert type(obj["half"]).__module__.startswith(
        "chada.opaque."
    )  # not torch.half: only module "torch" resolves
    assert obj["args"]._args == (1, "two")
    assert type(obj["foreign"]).__module__.startswith("chada.opaque.")  # a "...Storage" name outside torch


def test_reshape_and_unwrap_errors(student_sd):
    for bad in (torch.zeros(1, 2, 5, D), torch.zeros(2, 1, 5, D), torch.zeros(1, 5, D)):
        sd = dict(student_sd, pos_embed=bad)
        message = f"official pos_embed must be [1, 1, 1+N, D], got {tuple(bad.shape)}"
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            convert_official_state_dict(sd)
    for bad in (torch.zeros(1, CMAX, 2, D), torch.zeros(2, CMAX, 1, D), torch.zeros(CMAX, 1, D)):
        sd = dict(student_sd, channel_token=bad)
        with pytest.raises(ValueError, match=r"^official channel_token must be \[1, C_max, 1, D\], got "):
            convert_official_state_dict(sd)
    with pytest.raises(TypeError, match=r"^expected a state dict or a Lightning checkpoint dict, got list$"):
        convert_official_state_dict([1, 2])
    with pytest.raises(TypeError, match=r"^official key 'norm\.bias' holds a int, not a tensor$"):
        convert_official_state_dict(dict(student_sd, **{"norm.bias": 3}))
    sd = dict(student_sd, **{"head.a": torch.zeros(1), "head.b": torch.zeros(1)})
    with pytest.raises(
        ValueError, match=r"no counterpart in chada_vit_moyen_official\): \['head\.a', 'head\.b'\]$"
    ):
        convert_official_state_dict(sd)


def test_backbone_selection_messages(ckpt_sd, student_sd):
    assert select_official_backbone(ckpt_sd)[1] == "backbone."  # student by default
    with pytest.raises(ValueError) as err:
        select_official_backbone({"b": 1, "a": 2, **{f"k{i}": i for i in range(9)}})
    assert str(err.value) == (
        "no ChAda-ViT backbone found: no key ends with 'token_learner.proj.weight' (first keys: "
        "['a', 'b', 'k0', 'k1', 'k2', 'k3', 'k4', 'k5']); is this the authors' checkpoint?"
    )
    student_only = {f"backbone.{k}": v for k, v in student_sd.items()}
    with pytest.raises(ValueError, match=r"no teacher backbone .*use --student / which='student'$"):
        select_official_backbone(student_only, "teacher")
    two = {f"a.{k}": v for k, v in student_sd.items()} | {f"b.{k}": v for k, v in student_sd.items()}
    with pytest.raises(
        ValueError,
        match=r"^several backbones in the checkpoint \(\['a\.', 'b\.'\]\) and none is the student's; cannot choose$",
    ):
        select_official_backbone(two)


def test_load_report_and_in_memory_source(ckpt_sd, tmp_path):
    report = {}
    model = load_official_checkpoint(ckpt_sd, report=report)  # the student by default
    assert torch.equal(model.cls_token, ckpt_sd["backbone.cls_token"])
    assert (report["source"], report["which"], report["prefix"]) == (None, "student", "backbone.")
    assert report["model_name"] == "chada_vit_moyen_official" and report["overrides"] == {}
    assert report["mapped"]["blocks.3.linear1.bias"] == "blocks.3.mlp.fc1.bias"
    assert report["ignored"] == {
        "momentum_backbone": len(official_backbone(1)),
        "projector": 2,
        "momentum_projector": 1,
        "classifier": 1,
    }
    ckpt = tmp_path / "s.ckpt"
    torch.save({"state_dict": ckpt_sd}, ckpt)
    report = {}
    load_official_checkpoint(ckpt, "teacher", report=report, num_heads=4)
    assert (
        report["source"] == str(ckpt)
        and report["prefix"] == "momentum_backbone."
        and report["overrides"] == {"num_heads": 4}
    )
    sd = dict(ckpt_sd)
    bad = sd["backbone.norm.weight"].clone()
    bad[0] = float("inf")
    sd["backbone.norm.weight"] = bad
    with pytest.raises(ValueError, match=r"^the checkpoint: NaN or inf weights in backbone\.norm\.weight"):
        load_official_checkpoint(sd)
    sd = dict(ckpt_sd)
    sd["backbone.blocks.2.linear1.weight"] = torch.zeros(1024, D)
    sd["backbone.blocks.5.linear2.bias"] = torch.zeros(3)
    with pytest.raises(
        ValueError,
        match=r"fc1\.weight: checkpoint \(1024, 192\) vs model \(2048, 192\); blocks\.5\.mlp\.fc2\.bias",
    ):
        load_official_checkpoint(sd)


def test_non_persistent_buffers_are_initialised(ckpt_sd, monkeypatch):
    """A target whose model has a non-persistent buffer (not in any state dict) is built normally, not
    on the meta device, so the buffer holds its value and not uninitialised memory."""
    from chada.models import registry
    from chada.models.chada_vit import ChAdaViT

    monkeypatch.setattr(registry, "_ARCHS", dict(registry._ARCHS))
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    class WithBuffer(ChAdaViT):
        def __init__(self, config=None):
            super().__init__(config)
            self.register_buffer("scale", torch.full((64,), 2.5), persistent=False)

    registry.register_arch("chada_vit_with_buffer")(WithBuffer)
    arch, cfg, _ = registry.model_spec("chada_vit_moyen_official")
    registry.register_model("official_with_buffer", "chada_vit_with_buffer", **cfg)
    model = load_official_checkpoint(ckpt_sd, model_name="official_with_buffer", num_heads=4)
    assert torch.equal(model.scale, torch.full((64,), 2.5))
    assert (
        model.config.num_heads == 4 and model.blocks[0].attn.num_heads == 4
    )  # overrides reach this path too
    assert torch.equal(model.blocks[0].attn.qkv.weight, ckpt_sd["backbone.blocks.0.self_attn.in_proj_weight"])
