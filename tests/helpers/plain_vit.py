"""Plain reference code for the model tests: a ViT written from its equations with tensor algebra only.

No ``nn.Module``, no ``F.interpolate``, no ``F.scaled_dot_product_attention``, no ``F.conv2d`` or
``F.layer_norm``: resampling matrices, patch cutting, LayerNorm, GroupNorm, softmax attention, GELU
and convolution are written out, so a test comparing a model with this code compares two
independent implementations. Everything works on ONE image at a time (no batching, no padding, no
masks), in whatever dtype the inputs have (the tests use float64).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# ----------------------------------------------------------------------------------- resampling


def cubic(x: float, a: float) -> float:
    """Keys' cubic convolution kernel."""
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def antialias_matrix(n_in: int, n_out: int, kind: str) -> np.ndarray:
    """``[n_out, n_in]`` weights of a separable antialiased resize (``align_corners=False``).

    Output sample ``i`` sits at ``(i + 0.5) * n_in / n_out`` in input coordinates; the kernel (cubic
    with A = -0.5, or the triangle) is stretched by the scale when shrinking, taps outside the input
    are dropped and the remaining weights renormalised to sum to 1 (PIL's resize).
    """
    scale = n_in / n_out
    support = (2.0 if kind == "bicubic" else 1.0) * max(scale, 1.0)
    stretch = 1.0 / scale if scale > 1 else 1.0

    def kernel(x: float) -> float:
        return cubic(x, -0.5) if kind == "bicubic" else max(0.0, 1.0 - abs(x))

    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        for j in range(lo, hi):
            m[i, j] = kernel((j - center + 0.5) * stretch)
        m[i] /= m[i].sum()
    return m


def dino_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of DINO's resize: bicubic (A = -0.75), no antialiasing, sampled with
    the scale ``n_in / (n_out + 0.1)``; taps past the border repeat the edge sample."""
    scale = n_in / (n_out + 0.1)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        x0 = math.floor(src)
        t = src - x0
        for k, w in enumerate(
            [cubic(t + 1, -0.75), cubic(t, -0.75), cubic(1 - t, -0.75), cubic(2 - t, -0.75)]
        ):
            m[i, min(max(x0 - 1 + k, 0), n_in - 1)] += w
    return m


def positions(pos_embed: Tensor, g: int, h: int, w: int, kind: str) -> Tensor:
    """``[1 + h*w, D]`` from a ``[1, 1 + g*g, D]`` table: the CLS slot, then the ``g x g`` patch grid
    resized to ``h x w`` (row-major)."""
    pos = pos_embed[0].double()
    if (h, w) == (g, g):
        return pos
    grid = pos[1:].reshape(g, g, -1)  # [row, col, D]
    if kind == "dino_bicubic":
        mh, mw = dino_matrix(g, h), dino_matrix(g, w)
    else:
        mh, mw = antialias_matrix(g, h, kind), antialias_matrix(g, w, kind)
    out = torch.einsum("hi,ijd,wj->hwd", torch.from_numpy(mh), grid, torch.from_numpy(mw))
    return torch.cat([pos[:1], out.reshape(h * w, -1)])


# ----------------------------------------------------------------------------------- layers


def patches(image: Tensor, p: int) -> Tensor:
    """``[C, H, W]`` -> ``[h*w, C*p*p]``: row-major patches, each flattened channel, row, column."""
    C, H, W = image.shape
    h, w = H // p, W // p
    return image.reshape(C, h, p, w, p).permute(1, 3, 0, 2, 4).reshape(h * w, C * p * p)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def softmax(x: Tensor) -> Tensor:
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def prenorm_blocks(
    x: Tensor, P: dict[str, Tensor], depth: int, heads: int, eps: float, act: str = "gelu"
) -> tuple[list[Tensor], Tensor]:
    """Pre-norm blocks on one sequence ``x [L, D]`` with parameters ``P["blocks.{i}.…"]``: each block
    ``x + ls1 * attn(norm1(x))``, then ``x + ls2 * mlp(norm2(x))`` (MLP with GELU or ReLU).

    Returns every block's output and the last block's attention weights ``[heads, L, L]``.
    """
    D = x.shape[-1]
    hd = D // heads
    one = torch.ones(D, dtype=x.dtype)
    hidden, att = [], None
    for i in range(depth):
        b = f"blocks.{i}."
        y = layer_norm(x, P[b + "norm1.weight"], P[b + "norm1.bias"], eps)
        qkv = y @ P[b + "attn.qkv.weight"].T + P.get(b + "attn.qkv.bias", torch.zeros(3 * D, dtype=x.dtype))
        q, k, v = qkv.reshape(-1, 3, heads, hd).permute(1, 2, 0, 3)  # each [heads, L, hd]
        att = softmax(q @ k.transpose(1, 2) / math.sqrt(hd))
        o = (att @ v).permute(1, 0, 2).reshape(-1, D) @ P[b + "attn.proj.weight"].T + P[b + "attn.proj.bias"]
        x = x + P.get(b + "ls1.gamma", one) * o
        y = layer_norm(x, P[b + "norm2.weight"], P[b + "norm2.bias"], eps)
        z = y @ P[b + "mlp.fc1.weight"].T + P[b + "mlp.fc1.bias"]
        z = gelu(z) if act == "gelu" else z.clamp(min=0)
        m = z @ P[b + "mlp.fc2.weight"].T + P[b + "mlp.fc2.bias"]
        x = x + P.get(b + "ls2.gamma", one) * m
        hidden.append(x)
    return hidden, att


def conv2d(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """``x [C_in, H, W]``, ``weight [C_out, C_in, k, k]`` -> ``[C_out, H', W']``, zero padding, no bias:
    a sum over the k*k kernel offsets of strided slices."""
    c_in, H, W = x.shape
    k = weight.shape[-1]
    xp = torch.zeros(c_in, H + 2 * padding, W + 2 * padding, dtype=x.dtype)
    xp[:, padding : padding + H, padding : padding + W] = x
    h_out = (H + 2 * padding - k) // stride + 1
    w_out = (W + 2 * padding - k) // stride + 1
    out = torch.zeros(weight.shape[0], h_out, w_out, dtype=x.dtype)
    for dy in range(k):
        for dx in range(k):
            window = xp[
                :, dy : dy + stride * (h_out - 1) + 1 : stride, dx : dx + stride * (w_out - 1) + 1 : stride
            ]
            out += torch.einsum("oc,chw->ohw", weight[:, :, dy, dx], window)
    return out


def group_norm_1(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """GroupNorm with one group on ``[C, H, W]``: normalise over everything, then a per-channel affine."""
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / torch.sqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def assert_directional_derivatives(
    model: torch.nn.Module, loss, generator: torch.Generator, eps: float = 1e-6
) -> None:
    """For each parameter tensor: the gradient already in ``p.grad`` (from ``loss().backward()``),
    along a random direction, equals a central finite difference of ``loss`` (float64), and that
    difference is not ~0 (the parameter really moves the loss)."""
    for name, p in model.named_parameters():
        direction = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        with torch.no_grad():
            p.add_(eps * direction)
            up = loss().item()
            p.sub_(2 * eps * direction)
            down = loss().item()
            p.add_(eps * direction)
        numeric = (up - down) / (2 * eps)
        analytic = float((p.grad * direction).sum())
        assert abs(numeric) > 1e-6, name
        assert math.isclose(analytic, numeric, rel_tol=1e-5, abs_tol=1e-8), (name, analytic, numeric)
