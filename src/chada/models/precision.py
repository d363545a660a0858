"""Numeric precision for running a model: ``fp32``, ``bf16`` or ``auto``, and what ``auto`` picks.

``auto`` picks bf16 where the hardware runs it natively and fp32 elsewhere:

- CUDA: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and newer), else fp32;
- CPU: bf16 when the CPU reports ``amx_bf16`` (Intel Sapphire Rapids and newer) or ``avx512_bf16``
  (Intel Cooper Lake, AMD Zen 4/5) in ``/proc/cpuinfo``, or torch's own probe says so; else fp32.
  Without those instructions bf16 is emulated and runs slower than fp32.

Measured on the project's AMD EPYC (Zen 5, ``avx512_bf16``, no AMX), chada_vit_moyen at 224 px on the
IDRCell-like mix, 2 threads: bf16 inference (autocast below) ran 2.4-2.6x fp32 in warm interleaved
rounds (2.2x in a fresh process) with every CLS embedding at cosine >= 0.99996 to fp32
(benchmarks/README.md, "bf16 on CPU").

How a command uses it (the whole wiring)::

    from chada.models.precision import resolve_precision, autocast

    dtype, reason = resolve_precision(args.precision, device)   # "auto" | "fp32" | "bf16"
    log(f"precision: {reason}")
    with torch.inference_mode(), autocast(dtype, device):
        emb = model(batch)
    emb = emb.float()        # outputs may be bf16; store and compare features in fp32

``autocast`` keeps the weights and the residual stream in fp32 and runs the matmuls, the patch
projection and attention in bf16; on CPU the attention then takes the explicit bf16 path of
:func:`chada.models.layers.attention`. Casting the model itself (``model.to(torch.bfloat16)``, then
``model(batch).float()``) ran 3-10 % faster again but keeps the residual stream in bf16 (cosine
0.99991 instead of 0.99996 on random weights); autocast is the recommended, safer default.
Training keeps torch's fused attention (it has a memory-efficient backward), so bf16 training gains
less (1.6-1.7x in benchmarks/throughput.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import torch

__all__ = [
    "PRECISIONS",
    "read_cpu_flags",
    "cpu_model_name",
    "cpu_bf16_feature",
    "cuda_bf16_supported",
    "resolve_precision",
    "autocast",
    "precision_name",
]

PRECISIONS = ("auto", "fp32", "bf16")
_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "auto": "auto",
}
# Strongest first: the first flag found is the one named in the reason.
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def read_cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The ``flags`` of the first CPU in ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86 / aarch64
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_model_name(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """``model name`` from ``/proc/cpuinfo``, else the platform's processor string."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def _torch_cpu_probe() -> frozenset[str]:
    """Flags torch's own CPU probe reports (cpuinfo library; also works where /proc is absent)."""
    found = set()
    for flag, probe in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                found.add(flag)
        except Exception:  # a private probe: never let it break precision selection
            pass
    return frozenset(found)


def cpu_bf16_feature(flags: Iterable[str] | None = None) -> str | None:
    """The native bf16 feature of the CPU (``"amx_bf16"`` or ``"avx512_bf16"``) or None.

    Args:
        flags: CPU flags to judge (tests pass fake sets); None reads ``/proc/cpuinfo`` and torch's probe.
    """
    flags = (read_cpu_flags() | _torch_cpu_probe()) if flags is None else frozenset(flags)
    for flag in _CPU_BF16_FLAGS:
        if flag in flags:
            return flag
    return None


def cuda_bf16_supported(device: torch.device) -> bool:
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_precision(
    precision: str,
    device: str | torch.device = "cpu",
    *,
    cpu_flags: Iterable[str] | None = None,
    cuda_bf16: bool | None = None,
) -> tuple[torch.dtype, str]:
    """Turn ``"auto" | "fp32" | "bf16"`` into a dtype and a one-line reason to show the user.

    Args:
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (``"float32"``/``"bfloat16"`` accepted).
        device: where the model runs.
        cpu_flags: override of the CPU flags (for tests); None reads this machine's.
        cuda_bf16: override of the CUDA bf16 check (for tests); None asks torch.
    Returns:
        ``(torch.float32 or torch.bfloat16, reason)``.
    Raises:
        ValueError: unknown precision name.
    """
    key = _ALIASES.get(str(precision).strip().lower())
    if key is None:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if device.type == "cuda":
        native = cuda_bf16_supported(device) if cuda_bf16 is None else cuda_bf16
        where = "this CUDA device supports bf16" if native else "this CUDA device has no native bf16"
    elif device.type != "cpu":
        native, where = False, f"chada does not check bf16 support on {device.type} devices"
    else:
        feature = cpu_bf16_feature(cpu_flags)
        native = feature is not None
        where = f"the CPU reports {feature}" if native else "the CPU reports neither amx_bf16 nor avx512_bf16"
    if key == "fp32":
        return torch.float32, "fp32 (as asked)"
    if key == "bf16":
        if native:
            return torch.bfloat16, f"bf16 (as asked; {where})"
        return torch.bfloat16, f"bf16 (as asked, but {where}: it is emulated and may run slower than fp32)"
    if native:
        return torch.bfloat16, f"bf16 (auto: {where})"
    return torch.float32, f"fp32 (auto: {where})"


def precision_name(dtype: torch.dtype) -> str:
    """``"fp32"`` / ``"bf16"`` for a dtype returned by :func:`resolve_precision`."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype).replace("torch.", ""))


@contextlib.contextmanager
def autocast(dtype: torch.dtype, device: str | torch.device = "cpu") -> Iterator[None]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op for fp32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield
