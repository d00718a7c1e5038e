"""Device names -> torch devices, with a clear error for a device this machine does not have."""

from __future__ import annotations

import torch

from nestar.errors import ConfigError


def check_device(device: torch.device, field: str) -> torch.device:
    """Return `device` if this machine has it; else raise ConfigError naming `field` and the fix."""
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(
                f"{field}={str(device)!r} but CUDA is not available on this machine; "
                f"use {field}=cpu (or auto)"
            )
        if device.index is not None and device.index >= n:
            raise ConfigError(
                f"{field}={str(device)!r} but only {n} CUDA device(s) are visible (cuda:0..cuda:{n - 1})"
            )
    elif device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError(
            f"{field}='mps' but MPS is not available on this machine; use {field}=cpu"
        )
    return device


def parse_device(name: str, field: str) -> torch.device:
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ... checked with `check_device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"{field}: {name!r} is not a device (use auto, cpu, cuda, cuda:1, ...)"
        ) from e
    return check_device(device, field)
