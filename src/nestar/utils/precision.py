"""Numeric precision chosen from the hardware: `auto`, `fp32` or `bf16` (autocast).

bf16 autocast pays only where the hardware computes in bf16 natively: CUDA GPUs that support it,
and CPUs whose oneDNN reports native bf16 (AVX-512 BF16 / AMX). On CPUs with AVX2 only, oneDNN
emulates bf16 and a `nestar-fmnist` training step measured 10-15x slower than in fp32, so `auto`
picks fp32 there. Weights, optimiser state and losses stay fp32 in every case.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import ContextManager

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    """A resolved precision: `name` is 'fp32' or 'bf16'; `reason` says why, for the logs."""

    name: str
    reason: str
    requested: str = "auto"

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self, device_type: str) -> ContextManager:
        """bf16 autocast on `device_type` when bf16 was chosen, else a no-op context."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)

    def describe(self) -> str:
        return f"precision: {self.name} ({self.reason})"


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether `device` runs bf16 natively, and a short description of the hardware."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA {name}, {'native' if ok else 'no native'} bf16"
    if device.type == "cpu":
        cap = torch.backends.cpu.get_cpu_capability()
        try:
            ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN: bf16 would be emulated
            ok = False
        return ok, f"CPU {cap}, {'native' if ok else 'no native'} bf16"
    return False, f"{device.type}: bf16 autocast not used by nestar"


def check_precision(value: str, field: str = "precision") -> str:
    """Validate a requested precision; the error names the config field."""
    if value not in PRECISIONS:
        raise ValueError(f"{field} must be one of {list(PRECISIONS)}, got {value!r}")
    return value


def resolve_precision(
    requested: str, device: torch.device | str, field: str = "precision"
) -> Precision:
    """Resolve `auto` from the hardware; warn when bf16 is forced where it is emulated."""
    check_precision(requested, field)
    ok, hw = native_bf16(device)
    if requested == "fp32":
        return Precision("fp32", f"requested; {hw}", requested)
    if requested == "bf16":
        if not ok:
            warnings.warn(
                f"{field}=bf16 on {hw}: bf16 is emulated here and runs about 10-15x slower than "
                f"fp32 on CPUs (measured on AVX2); use {field}=auto or fp32",
                stacklevel=2,
            )
            return Precision("bf16", f"requested; {hw}: emulated, slow", requested)
        return Precision("bf16", f"requested; {hw}", requested)
    return Precision("bf16" if ok else "fp32", hw, requested)


def cpu_description() -> str:
    """'<CPU model> (<capability>, N cores)' for reports: a timing means little without the CPU."""
    import os
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name
            )
    except OSError:
        pass
    ok, _ = native_bf16("cpu")
    cap = torch.backends.cpu.get_cpu_capability()
    return f"{name} ({cap}, {'native' if ok else 'no native'} bf16, {os.cpu_count()} cores)"
