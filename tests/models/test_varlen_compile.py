"""``run.compile=true`` (per-block compile) with varlen attention and drop path: one graph per block
serves every batch mix. Dynamo runs with its ``eager`` backend (its tracing and guards, without
inductor's minutes of code generation) and the CUDA varlen kernel is a stand-in computing the same
attention with a block-diagonal mask from ``cu_seqlens``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chada.models import ChannelBatch, create_model
from chada.models import varlen as varlen_mod
from chada.ssl.trainer import compile_blocks


def _fake_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
    seq = torch.searchsorted(cu_q[1:].long(), torch.arange(q.shape[0]), right=True)
    mask = seq[:, None] == seq[None, :]
    out = F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)), attn_mask=mask)
    return out[0].transpose(0, 1)


@pytest.fixture
def eager_dynamo(monkeypatch: pytest.MonkeyPatch):
    import torch._dynamo
    import torch.nn.attention.varlen as torch_varlen

    original = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self, *a, **kw: original(self, *a, **dict(kw, backend="eager"))
    )
    monkeypatch.setattr(torch_varlen, "varlen_attn", _fake_varlen_attn)
    monkeypatch.setattr(varlen_mod, "_varlen_kernel_available", lambda q: True)
    monkeypatch.setattr(varlen_mod, "varlen_kernel_supported", lambda device: True)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_varlen_drop_path_compiles_once_per_block_for_every_batch_mix(eager_dynamo) -> None:
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = create_model("chada_vit_test", attention="varlen", drop_path_rate=0.2).train()
    compile_blocks(model)
    graphs = []
    for counts in ([1, 3, 2], [4, 4, 1, 2, 7], [10, 1], [2, 2, 2, 2, 2, 2]):
        batch = ChannelBatch.from_images([torch.randn(c, 32, 32) for c in counts])
        model.forward_features(batch).cls.sum().backward()
        graphs.append(int(counters["stats"]["unique_graphs"]))
    # one graph per block (each block's drop-path rate is a constant), none added by a new mix
    assert graphs == [model.config.depth] * 4
