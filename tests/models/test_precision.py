"""Precision selection (fp32 / bf16 / auto) and bf16 inference accuracy.

The detection logic is tested on fake flag sets only: the test machine's CPU is never assumed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chada
from chada.models import layers
from chada.models.precision import (
    autocast,
    cpu_bf16_feature,
    cpu_model_name,
    precision_name,
    read_cpu_flags,
    resolve_precision,
)

AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}
ZEN4 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize(
    "flags, dtype, word",
    [
        (SAPPHIRE_RAPIDS, torch.bfloat16, "amx_bf16"),
        (ZEN4, torch.bfloat16, "avx512_bf16"),
        (AVX2_ONLY, torch.float32, "neither"),
        (set(), torch.float32, "neither"),
        ({"avx512f", "avx512bw"}, torch.float32, "neither"),  # AVX-512 without its bf16 extension
    ],
)
def test_auto_on_cpu_follows_the_flags(flags, dtype, word) -> None:
    got, reason = resolve_precision("auto", "cpu", cpu_flags=flags)
    assert got == dtype
    assert reason.startswith(precision_name(dtype) + " (auto") and word in reason


def test_explicit_choices_and_cuda() -> None:
    assert resolve_precision("fp32", "cpu", cpu_flags=SAPPHIRE_RAPIDS) == (torch.float32, "fp32 (as asked)")
    dtype, reason = resolve_precision("bf16", "cpu", cpu_flags=AVX2_ONLY)
    assert dtype == torch.bfloat16 and "emulated" in reason
    dtype, reason = resolve_precision("bfloat16", "cpu", cpu_flags=ZEN4)
    assert dtype == torch.bfloat16 and "emulated" not in reason
    # CUDA: the device's bf16 support decides, never the CPU flags.
    assert resolve_precision("auto", "cuda", cpu_flags=SAPPHIRE_RAPIDS, cuda_bf16=False)[0] == torch.float32
    assert resolve_precision("auto", "cuda:1", cpu_flags=AVX2_ONLY, cuda_bf16=True)[0] == torch.bfloat16
    assert resolve_precision("auto", "meta", cpu_flags=SAPPHIRE_RAPIDS)[0] == torch.float32
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'fp32', 'bf16'\), got 'fp16'"):
        resolve_precision("fp16", "cpu")


def test_cpuinfo_parsing(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Fake CPU 9000\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n\n"
        "processor\t: 1\nmodel name\t: Fake CPU 9000\nflags\t\t: fpu\n"
    )
    assert read_cpu_flags(info) == {"fpu", "avx2", "avx512_bf16", "amx_bf16"}
    assert cpu_bf16_feature(read_cpu_flags(info)) == "amx_bf16"
    assert cpu_model_name(info) == "Fake CPU 9000"
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def test_autocast_helper_is_a_no_op_for_fp32() -> None:
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(torch.float32, "cpu"):
        assert lin(x).dtype == torch.float32
    with autocast(torch.bfloat16, "cpu"):
        assert lin(x).dtype == torch.bfloat16


@pytest.mark.parametrize("mask", [False, True])
def test_explicit_attention_equals_sdpa(mask: bool) -> None:
    """The explicit chunked kernel computes exactly what SDPA computes (checked in fp32, chunked)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 37, 8, generator=g) for _ in range(3))
    m = None
    if mask:
        m = torch.rand(3, 1, 1, 37, generator=g) > 0.3
        m[..., 0] = True
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    got = layers._explicit_attention(q, k, v, m, chunk=10)  # 4 chunks, the last one partial
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["padded", "packed", "varlen"])
@pytest.mark.parametrize("kernel", ["explicit", "sdpa"])
def test_bf16_embeddings_close_to_fp32(mode: str, kernel: str, monkeypatch) -> None:
    """bf16 (autocast, as resolve_precision + autocast run it) vs fp32: CLS cosine >= 0.999."""
    monkeypatch.setattr(layers, "CPU_BF16_ATTENTION", kernel)
    torch.manual_seed(0)
    model = chada.create_model("chada_vit_test", attention=mode).eval()
    with torch.no_grad():  # non-trivial embeddings, biases and norms
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(c, 32, 32, generator=g) for c in (1, 3, 10, 2, 3)]
    with torch.inference_mode():
        ref = model(images, pool="all")
        with autocast(torch.bfloat16, "cpu"):
            low = model(images, pool="all")
        model_bf16 = model.to(torch.bfloat16)
        weights = model_bf16(images, pool="all")
    for out in (low, weights):
        assert out.isfinite().all()
        cos = F.cosine_similarity(out.float(), ref).min().item()
        assert cos >= 0.999, cos
        assert (out.float() - ref).abs().max().item() > 0  # bf16 really ran


def test_bf16_inference_takes_the_explicit_path(monkeypatch) -> None:
    calls = []
    real = layers._explicit_attention
    monkeypatch.setattr(layers, "_explicit_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = chada.create_model("chada_vit_test").eval()
    x = [torch.rand(2, 32, 32)]
    with torch.inference_mode(), autocast(torch.bfloat16, "cpu"):
        model(x)
    assert len(calls) == model.config.depth
    calls.clear()
    with torch.inference_mode():
        model(x)  # fp32 keeps the fused SDPA kernel
    model.train()
    with autocast(torch.bfloat16, "cpu"):
        model(x).float().sum().backward()  # training keeps SDPA (it has a backward)
    assert not calls


# ------------------------------------------------------------------ detection details (mutation testing)
def test_reasons_name_the_deciding_fact() -> None:
    assert resolve_precision("auto", cpu_flags=AVX2_ONLY) == (
        torch.float32,
        "fp32 (auto: the CPU reports neither amx_bf16 nor avx512_bf16)",
    )
    assert resolve_precision("auto", cpu_flags=ZEN4)[1] == "bf16 (auto: the CPU reports avx512_bf16)"
    assert resolve_precision(" BF16 ", cpu_flags=ZEN4)[1] == "bf16 (as asked; the CPU reports avx512_bf16)"
    assert resolve_precision("32", cpu_flags=ZEN4)[0] == torch.float32
    assert (
        resolve_precision("auto", "cuda", cuda_bf16=True)[1] == "bf16 (auto: this CUDA device supports bf16)"
    )
    assert (
        resolve_precision("auto", "cuda", cuda_bf16=False)[1]
        == "fp32 (auto: this CUDA device has no native bf16)"
    )
    assert resolve_precision("bf16", "cuda", cuda_bf16=False)[1] == (
        "bf16 (as asked, but this CUDA device has no native bf16: it is emulated and may run slower than fp32)"
    )
    assert (
        resolve_precision("auto", "meta")[1]
        == "fp32 (auto: chada does not check bf16 support on meta devices)"
    )


def test_cuda_check_is_asked_for_the_given_device(monkeypatch) -> None:
    """Without an override the CUDA device itself is asked, for native (not emulated) bf16."""
    from chada.models import precision

    real = precision.cuda_bf16_supported
    asked = []
    monkeypatch.setattr(precision, "cuda_bf16_supported", lambda device: asked.append(device) or True)
    assert resolve_precision("auto", "cuda:1")[0] == torch.bfloat16
    assert asked == [torch.device("cuda:1")]

    calls = []

    class FakeDevice:
        def __init__(self, device):
            calls.append(("device", device))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: calls.append(including_emulation) or True,
    )
    assert real(torch.device("cuda:1")) is True
    assert calls == [("device", torch.device("cuda:1")), False]  # inside the device, emulation not counted
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert real(torch.device("cuda:0")) is False


def test_cpu_feature_unites_cpuinfo_and_torch_probe(monkeypatch) -> None:
    from chada.models import precision

    monkeypatch.setattr(precision, "read_cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(precision, "_torch_cpu_probe", lambda: frozenset({"avx512_bf16"}))
    assert cpu_bf16_feature() == "avx512_bf16"
    monkeypatch.setattr(precision, "read_cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(precision, "_torch_cpu_probe", lambda: frozenset())
    assert cpu_bf16_feature() == "amx_bf16"
    assert cpu_bf16_feature([]) is None  # an explicit empty set is not "read this machine"


def test_torch_probe_maps_each_probe_to_its_flag(monkeypatch) -> None:
    from chada.models import precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert precision._torch_cpu_probe() == {"amx_bf16"}
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert precision._torch_cpu_probe() == {"avx512_bf16"}

    def broken():
        raise RuntimeError("probe failed")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert precision._torch_cpu_probe() == frozenset()  # a failing or missing private probe is no flag


def test_cpuinfo_aarch64_features_and_colons(tmp_path, monkeypatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\nmodel name\t: Vendor: Chip 3000 @ 2:1\n")
    assert read_cpu_flags(info) == {"fp", "asimd", "bf16"}
    assert cpu_model_name(info) == "Vendor: Chip 3000 @ 2:1"
    import platform

    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    assert cpu_model_name(tmp_path / "missing") == "riscv64"
    monkeypatch.setattr(platform, "processor", lambda: "x86_64 proc")
    assert cpu_model_name(tmp_path / "missing") == "x86_64 proc"
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "")
    assert cpu_model_name(tmp_path / "missing") == "unknown CPU"


def test_precision_name_of_other_dtypes() -> None:
    assert precision_name(torch.float32) == "fp32" and precision_name(torch.bfloat16) == "bf16"
    assert precision_name(torch.float16) == "float16" and precision_name(torch.float64) == "float64"


def test_cpuinfo_readers_default_to_proc_cpuinfo(monkeypatch, tmp_path) -> None:
    """Without an argument both readers open ``/proc/cpuinfo`` (here a fake file standing in for it)."""
    from chada.models import precision

    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Fake CPU 7\nflags\t\t: fpu avx512_bf16\n")
    opened = []
    real_open = open
    monkeypatch.setattr(
        precision, "open", lambda path, *a: opened.append(path) or real_open(info, *a), raising=False
    )
    assert read_cpu_flags() == {"fpu", "avx512_bf16"}
    assert cpu_model_name() == "Fake CPU 7"
    assert opened == ["/proc/cpuinfo", "/proc/cpuinfo"]
