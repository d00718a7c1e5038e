"""Pixel-patch tokenizer: an exact, parameter-free reshape (MAR/FractalGen-style pixel tokens)."""

from __future__ import annotations

import torch

from nestar.tokenizers.base import Tokenizer


class PatchTokenizer(Tokenizer):
    """(B, C, S, S) -> (B, (S/p)^2, p*p*C); token channels ordered (C, p, p), rows then columns.

    32x32x1 with p=2 gives a 16x16 grid of 4-channel tokens; with p=4 an 8x8 grid of 16 channels.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        patch_size: int,
        scale: float = 1.0,
        shift: float = 0.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not divisible by tokenizer.patch_size {patch_size}"
            )
        self.image_size, self.channels, self.patch_size = image_size, channels, patch_size
        self.grid_size = image_size // patch_size
        self.token_dim = channels * patch_size * patch_size
        self.scale, self.shift = scale, shift

    def encode(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images_BCHW.shape
        if (c, h, w) != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"expected images of shape (B, {self.channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(images_BCHW.shape)}"
            )
        p, g = self.patch_size, self.grid_size
        x = (
            images_BCHW.reshape(b, c, g, p, g, p)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(b, g * g, c * p * p)
        )
        return (x - self.shift) * self.scale

    def decode(self, tokens_BLC: torch.Tensor) -> torch.Tensor:
        b = tokens_BLC.shape[0]
        p, g, c = self.patch_size, self.grid_size, self.channels
        x = tokens_BLC / self.scale + self.shift
        return x.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)
