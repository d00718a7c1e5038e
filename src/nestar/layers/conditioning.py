"""Class conditioning shared by every model: one embedding row per class plus the null class."""

from __future__ import annotations

import torch
from torch import nn


class ClassEmbedding(nn.Embedding):
    """`num_classes + 1` rows; id `num_classes` is the null class (label dropout, guidance).

    PyTorch's default init (normal); models that want another re-initialise `weight` themselves, in
    their own order, so the random stream of every model stays as it was.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__(num_classes + 1, dim)
        self.num_classes = num_classes

    def tokens(self, labels_B: torch.Tensor, positions_cD: torch.Tensor) -> torch.Tensor:
        """(B, c, D) condition tokens: the class embedding plus each condition slot's position."""
        return self(labels_B)[:, None, :] + positions_cD[None]
