"""Tokenizers: images <-> continuous token grids (B, H*W, C) in raster order."""
from __future__ import annotations

from dataclasses import dataclass

from nestar.tokenizers.base import Tokenizer
from nestar.tokenizers.patch import PatchTokenizer


@dataclass
class TokenizerConfig:
    """`name`: 'patch' (identity pixel patches). `scale`/`shift` map tokens as (x - shift) * scale."""

    name: str = "patch"
    patch_size: int = 4
    scale: float = 1.0
    shift: float = 0.0


def build_tokenizer(cfg: TokenizerConfig, image_size: int, channels: int) -> Tokenizer:
    if cfg.name == "patch":
        return PatchTokenizer(image_size, channels, cfg.patch_size, scale=cfg.scale, shift=cfg.shift)
    raise ValueError(f"tokenizer.name must be 'patch', got {cfg.name!r}")


__all__ = ["PatchTokenizer", "Tokenizer", "TokenizerConfig", "build_tokenizer"]
