"""The tokenizer interface every model trains against."""

from __future__ import annotations

import torch
from torch import nn


class Tokenizer(nn.Module):
    """Maps images in [-1, 1] (B, C, S, S) to token grids (B, H*W, token_dim) in raster order and back.

    Subclasses set `grid_size` (H == W), `token_dim`, `image_size` and `channels`.
    """

    grid_size: int
    token_dim: int
    image_size: int
    channels: int

    def encode(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens_BLC: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
