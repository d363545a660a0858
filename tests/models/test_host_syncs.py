"""No host sync in a forward pass or a DINO loss step, counted on CPU.

A GPU sync is the host reading a device tensor's value (``.item()``, ``.tolist()``, ``bool(t)``,
``torch.nonzero``, an unsized ``repeat_interleave``, a shape check on device data). Tensors on the
``meta`` device have shapes but no values, so every such read raises there: a forward pass that
runs on ``meta`` has no host sync, and one reintroduced read fails these tests. Batches are built and
checked on the CPU, then moved with :meth:`ChannelBatch.to`, as the trainer and ``chada embed`` do.
"""

from __future__ import annotations

import pytest
import torch

from chada.models import ChannelBatch, create_model
from chada.models import varlen as varlen_mod
from chada.ssl.dino import DINOHead, DINOLoss, MultiCropWrapper

META = torch.device("meta")
COUNTS = [1, 3, 2, 3, 10]


def _views(size: int, ids: bool = False) -> ChannelBatch:
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(c, size, size, generator=g) for c in COUNTS]
    slots = [list(range(c))[::-1] for c in COUNTS] if ids else None
    return ChannelBatch.from_images(images, channel_ids=slots)


@pytest.mark.parametrize("mode", ["packed", "varlen", "padded"])
@pytest.mark.parametrize("train", [False, True])
def test_forward_reads_nothing_back_from_the_device(mode: str, train: bool) -> None:
    model = create_model("chada_vit_test", attention=mode, drop_path_rate=0.2)
    model.train(train).to(META)
    batch = _views(32, ids=True).to(META, non_blocking=True)
    out = model.forward_features(batch)
    assert out.cls.device == META and out.cls.shape == (len(COUNTS), 32)
    assert out.patch_tokens.shape == (len(COUNTS), 10, 16, 32)


def test_varlen_kernel_path_builds_no_index_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fused kernel (faked: it needs CUDA), the fallback's token-order lists are never built."""
    calls = []

    def fake_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
        calls.append(max_q)
        return torch.empty_like(q)

    def no_grouping(self):
        raise AssertionError("the grouped fallback's index lists were built for the fused kernel")

    import torch.nn.attention.varlen as torch_varlen

    monkeypatch.setattr(torch_varlen, "varlen_attn", fake_varlen_attn)
    monkeypatch.setattr(varlen_mod, "_varlen_kernel_available", lambda q: True)
    monkeypatch.setattr(varlen_mod, "varlen_kernel_supported", lambda device: True)
    monkeypatch.setattr(varlen_mod.VarlenSegments, "_group", no_grouping)
    model = create_model("chada_vit_test", attention="varlen", drop_path_rate=0.2).train().to(META)
    model.forward_features(_views(32).to(META))
    assert calls == [1 + 10 * 16] * model.config.depth


def test_dino_step_reads_nothing_back_from_the_device() -> None:
    """Student and teacher forward over 2 global + 2 local views, the loss and its centre update, and
    the backward pass: all on meta."""
    backbone = create_model("chada_vit_test", drop_path_rate=0.1)
    student = MultiCropWrapper(backbone, DINOHead(32, 64, 32, 16)).to(META).train()
    loss_fn = DINOLoss(64, n_global=2).to(META)
    views = [_views(32).to(META, non_blocking=True) for _ in range(2)] + [
        _views(16, ids=True).to(META, non_blocking=True) for _ in range(2)
    ]
    with torch.no_grad():
        teacher_out = student(views[:2])
    loss = loss_fn(student(views), teacher_out, teacher_temp=0.04)
    loss.backward()
    assert loss.device == META and loss.shape == ()


def test_to_copies_pixels_once_and_counts_without_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _views(32, ids=True)
    seen: list[tuple[str, bool]] = []
    real_to = torch.Tensor.to
    names = {id(batch.pixels): "pixels", id(batch.counts): "counts", id(batch.channel_ids): "ids"}

    def spy(self, *args, **kwargs):
        if id(self) in names:
            seen.append((names[id(self)], bool(kwargs.get("non_blocking", False))))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    moved = batch.to(META, non_blocking=True)
    assert sorted(seen) == [("counts", True), ("ids", True), ("pixels", True)]
    assert moved.host_counts == tuple(COUNTS) and moved.finite_checked


def test_non_finite_pixels_are_refused_on_the_cpu_before_the_copy() -> None:
    batch = _views(32)
    batch.pixels[5, 0, 0] = float("nan")  # image 2's first channel (counts 1, 3, 2, ...)
    with pytest.raises(ValueError, match=r"NaN or inf pixels in images \[2\]"):
        batch.to(META)


def test_pinned_samples_are_stacked_into_pinned_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DataLoader with pin_memory=True pins samples; stacking them must not drop back to pageable
    memory (pinning needs CUDA, so the pin request is recorded instead)."""
    pinned: list[bool] = []
    real_empty = torch.empty

    def fake_empty(*args, pin_memory: bool = False, **kwargs):
        pinned.append(pin_memory)
        return real_empty(*args, **kwargs)

    images = [torch.randn(c, 8, 8) for c in (2, 3)]
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a: True)
    monkeypatch.setattr(torch, "empty", fake_empty)
    batch = ChannelBatch.from_images(images)
    assert pinned == [True]
    torch.testing.assert_close(batch.pixels, torch.cat(images))


def test_varlen_falls_back_below_compute_capability_8(monkeypatch: pytest.MonkeyPatch) -> None:
    """V100 (7.0) and T4 (7.5) have no FlashAttention: the varlen mode uses the grouped fallback."""
    capability = {0: (7, 5), 1: (8, 0), 2: (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability[i])
    monkeypatch.setattr(varlen_mod, "_capability_cache", {})
    assert not varlen_mod.varlen_kernel_supported(torch.device("cuda", 0))
    assert varlen_mod.varlen_kernel_supported("cuda:1") and varlen_mod.varlen_kernel_supported("cuda:2")
    assert not varlen_mod.varlen_kernel_supported("cpu")


def test_pinning_checks_the_pixels_off_the_training_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DataLoader's pin-memory thread runs ``pin_memory``: the check happens there, once."""
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: self.clone())  # pinning needs CUDA
    pinned = _views(32).pin_memory()
    assert pinned.finite_checked
    bad = _views(32)
    bad.pixels[0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf pixels in images \[0\]"):
        bad.pin_memory()
