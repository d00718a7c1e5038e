"""Reading autoencoder weights from local files: safetensors, or torch pickles opened with
weights_only=True (tensors and plain containers only), with a report of what did not fit."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nestar.config import ConfigError

OBTAIN_HINT = (
    "nestar never downloads weights: obtain the file manually (the KL-16 VAE `kl16.ckpt` is linked from "
    "the README of the public MAR repository, LTH14/mar) on a machine with internet access and copy it here"
)
# State-dict entries a training checkpoint may carry that are not part of the autoencoder
# (LDM's LPIPS/discriminator loss module); ignored, and listed in the report.
IGNORED_PREFIXES = ("loss.",)
# Containers a checkpoint may wrap its state dict in.
WRAPPER_KEYS = ("model", "state_dict", "module")


class TokenizerCheckpointError(ConfigError):
    """A tokenizer checkpoint is missing, unreadable, or does not fit the architecture."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: `.safetensors`, or a torch pickle (optionally wrapped in
    {"model": ...} / {"state_dict": ...}) loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerCheckpointError(
            f"tokenizer checkpoint {path} not found. {OBTAIN_HINT} (expected location: {path}; "
            f"or pass --tokenizer.path=FILE)."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise TokenizerCheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TokenizerCheckpointError(
            f"{path} could not be loaded with torch.load(weights_only=True) ({type(e).__name__}: {e}). "
            f"Only plain tensor state dicts are accepted; convert other files to .safetensors."
        ) from e
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        top = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise TokenizerCheckpointError(
            f"{path} does not hold a state dict of tensors (top level: {top}); expected a dict of tensors, "
            f"optionally under one of {list(WRAPPER_KEYS)}"
        )
    return obj


def remap_keys(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip DDP's `module.` prefix and drop training-only entries; returns (state dict, ignored keys)."""
    out, ignored = {}, []
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module.") :]
        if k.startswith(IGNORED_PREFIXES):
            ignored.append(k)
            continue
        out[k] = v
    return out, ignored


@dataclass
class LoadReport:
    path: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.path}"]
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {self.missing}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {self.unexpected}")
        if self.ignored:
            parts.append(f"ignored training-only keys: {len(self.ignored)}")
        return "; ".join(parts)


def _list(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def load_weights(
    model: nn.Module, sd: dict[str, torch.Tensor], path: str = "<state dict>", strict: bool = False
) -> LoadReport:
    """Copy `sd` into `model` after remapping. Any shape mismatch or missing key raises (naming
    them); unexpected keys raise when `strict`, else are reported with a warning."""
    sd, ignored = remap_keys(sd)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(sd) & set(own))
        if sd[k].shape != own[k].shape
    ]
    if bad:
        raise TokenizerCheckpointError(
            f"{path}: {len(bad)} tensor(s) have the wrong shape for this architecture: {_list(bad, 5)}. "
            f"Is the tokenizer config (z_channels, ch, ch_mult) the one the checkpoint was trained with?"
        )
    if missing:
        raise TokenizerCheckpointError(
            f"{path}: {len(missing)} weight(s) of the autoencoder are missing from the checkpoint: {_list(missing)}"
            + (f"; it has unexpected keys: {_list(unexpected)}" if unexpected else "")
        )
    if unexpected and strict:
        raise TokenizerCheckpointError(
            f"{path}: unexpected keys in the checkpoint: {_list(unexpected)}"
        )
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(sd[k].to(dtype=t.dtype))
    report = LoadReport(str(path), len(own), missing, unexpected, ignored)
    if unexpected:
        warnings.warn(
            f"{path}: {len(unexpected)} unexpected key(s) not used: {_list(unexpected)}",
            stacklevel=2,
        )
    return report
