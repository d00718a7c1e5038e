"""Tokenizers: images <-> continuous token grids (B, H*W, C) in raster order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nestar.tokenizers.base import Tokenizer
from nestar.tokenizers.patch import PatchTokenizer

TOKENIZER_NAMES = ("patch", "kl", "kl16")


@dataclass
class TokenizerConfig:
    """Which tokenizer maps images to tokens.

    `name`:
    - 'patch': identity pixel patches of `patch_size`.
    - 'kl': a KL-VAE trained by `nestar train-tokenizer`; `path` is its output directory.
    - 'kl16': the public KL-16 VAE of MAR (256x256x3 -> 16x16x16); `path` is a local copy of
      `kl16.ckpt` or a .safetensors file (default `pretrained_models/vae/kl16.ckpt`).
    Tokens are (x - shift) * scale. `scale`/`shift` None means the tokenizer's own default:
    1 / 0 for 'patch', 0.2325 / 0 for 'kl16', the values measured on the data and stored in the
    directory for 'kl'. `sample_posterior`: VAE tokens are a posterior sample instead of the mean.
    """

    name: str = "patch"
    patch_size: int = 4
    scale: Optional[float] = None
    shift: Optional[float] = None
    path: Optional[str] = None
    sample_posterior: bool = False

    def __post_init__(self) -> None:
        if self.name not in TOKENIZER_NAMES:
            raise ValueError(
                f"tokenizer.name must be one of {list(TOKENIZER_NAMES)}, got {self.name!r}"
            )
        if self.name == "kl" and not self.path:
            raise ValueError(
                "tokenizer.path (a directory written by `nestar train-tokenizer`) is required "
                "when tokenizer.name='kl'"
            )
        if self.patch_size < 1:
            raise ValueError(
                f"tokenizer.patch_size must be >= 1 and divide data.image_size, got {self.patch_size}"
            )
        if self.scale is not None and self.scale == 0:
            raise ValueError("tokenizer.scale must be non-zero")


def _kl_geometry(arch, image_size: int, channels: int, what: str) -> tuple[int, int]:
    f = arch.downsample_factor
    if channels != arch.in_channels:
        raise ValueError(
            f"{what} expects {arch.in_channels}-channel images but data.channels={channels}"
        )
    if image_size % f:
        raise ValueError(
            f"data.image_size {image_size} is not divisible by {what}'s downsampling factor {f}"
        )
    return image_size // f, arch.z_channels


def tokenizer_geometry(cfg: TokenizerConfig, image_size: int, channels: int) -> tuple[int, int]:
    """(grid_size, token_dim) of a tokenizer without building it or reading weights.

    For 'kl' this reads only the directory's config.json; 'patch' and 'kl16' read nothing.
    """
    if cfg.name == "patch":
        if image_size % cfg.patch_size:
            raise ValueError(
                f"data.image_size {image_size} is not divisible by tokenizer.patch_size {cfg.patch_size}; "
                f"pick a patch size that divides it"
            )
        return image_size // cfg.patch_size, channels * cfg.patch_size**2
    if cfg.name == "kl16":
        from nestar.tokenizers.kl_vae import kl16_config

        return _kl_geometry(kl16_config(), image_size, channels, "the KL-16 VAE")
    if cfg.name == "kl":
        from nestar.tokenizers.kl_vae import read_kl_dir_config

        return _kl_geometry(
            read_kl_dir_config(cfg.path)["arch"], image_size, channels, f"the VAE in {cfg.path}"
        )
    raise ValueError(f"tokenizer.name must be one of {list(TOKENIZER_NAMES)}, got {cfg.name!r}")


def build_tokenizer(cfg: TokenizerConfig, image_size: int, channels: int) -> Tokenizer:
    """Build the tokenizer (loading VAE weights from local files for 'kl' / 'kl16')."""
    shift = 0.0 if cfg.shift is None else cfg.shift
    if cfg.name == "patch":
        scale = 1.0 if cfg.scale is None else cfg.scale
        return PatchTokenizer(image_size, channels, cfg.patch_size, scale=scale, shift=shift)
    from nestar.tokenizers.kl_vae import KLTokenizer, load_kl_dir

    if cfg.name == "kl16":
        from nestar.tokenizers.kl16 import KL16_SCALE, load_kl16

        tokenizer_geometry(cfg, image_size, channels)  # channel / size errors before reading 300 MB
        vae, _ = load_kl16(cfg.path)
        scale = KL16_SCALE if cfg.scale is None else cfg.scale
        return KLTokenizer(vae, image_size, scale, shift, cfg.sample_posterior, name="kl16")
    if cfg.name == "kl":
        tokenizer_geometry(cfg, image_size, channels)
        vae, meta = load_kl_dir(cfg.path)
        scale = meta["latent_scale"] if cfg.scale is None else cfg.scale
        shift = meta["latent_shift"] if cfg.shift is None else cfg.shift
        return KLTokenizer(vae, image_size, scale, shift, cfg.sample_posterior, name="kl")
    raise ValueError(f"tokenizer.name must be one of {list(TOKENIZER_NAMES)}, got {cfg.name!r}")


__all__ = [
    "PatchTokenizer",
    "TOKENIZER_NAMES",
    "Tokenizer",
    "TokenizerConfig",
    "build_tokenizer",
    "tokenizer_geometry",
]
