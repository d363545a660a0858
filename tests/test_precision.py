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
