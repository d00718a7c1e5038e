"""The head interface shared by every model: per-token conditional generative heads (MAR-style).

The backbone produces a condition vector z per target token; the head alone knows how a token is
drawn given z (flow matching here; GMM or DDPM heads plug in behind the same two methods).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class Head(nn.Module):
    """Per-token conditional generator: `loss` for training, `sample` (optionally guided) for drawing."""

    token_dim: int
    cond_dim: int
    blocks: nn.ModuleList

    def loss(
        self, target_NC: torch.Tensor, z_NZ: torch.Tensor, group_size: int = 1
    ) -> torch.Tensor:
        """Mean training loss of tokens `target_NC` given conditions `z_NZ` (same leading shape).

        `group_size`: the tokens come in runs of that many that belong together (one NestAR patch);
        per-token heads ignore it, a joint head models each run as one sample.
        """
        raise NotImplementedError

    def sample(
        self,
        z_NZ: torch.Tensor,
        *,
        z_uncond_NZ: Optional[torch.Tensor] = None,
        guidance_scale: float = 1.0,
        num_steps: int = 25,
        temperature: float = 1.0,
        generator: Optional[torch.Generator] = None,
        group_size: int = 1,
    ) -> torch.Tensor:
        """Draw one token per condition. With `z_uncond_NZ` and guidance_scale != 1,
        guide towards z.
        `group_size` as in `loss` (rows of z in runs of that many)."""
        raise NotImplementedError

    def checkpoint_units(self) -> list[nn.Module]:
        """The head's residual / transformer blocks (activation checkpointing recomputes each)."""
        return list(self.blocks)

    def nfe(self, num_steps: int) -> int:
        """Network evaluations per `sample` call (per guidance branch)."""
        raise NotImplementedError
