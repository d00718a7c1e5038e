"""One adaLN transformer block (DiT/VAR style) for the heads: attention within a sequence, then MLP.

Norms carry no affine parameters; a condition vector gives per-branch shift, scale and gate. The
joint flow head attends across the tokens of a patch (no mask, per-token conditions); the GMM head
runs causally over a token's channels with a KV cache (one condition per sequence). Both keep
their checkpoints: the parameter names are shared and `layout` says in which order the six
modulation chunks sit in `ada`'s output.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from nestar.layers.transformer import KVCache

# order of the chunks of ada(c): 'dit' (joint flow head), 'var' (GMM head, as ARINAR)
LAYOUTS = {
    "dit": ("shift1", "scale1", "gate1", "shift2", "scale2", "gate2"),
    "var": ("gate1", "gate2", "scale1", "scale2", "shift1", "shift2"),
}


class Modulation(NamedTuple):
    shift1: torch.Tensor
    scale1: torch.Tensor
    gate1: torch.Tensor
    shift2: torch.Tensor
    scale2: torch.Tensor
    gate2: torch.Tensor


class AdaLNBlock(nn.Module):
    """Pre-norm block modulated by a condition of width `cond_dim` (default: `width`)."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        cond_dim: Optional[int] = None,
        layout: str = "dit",
    ):
        super().__init__()
        self.heads, self.head_dim, self.layout = heads, width // heads, LAYOUTS[layout]
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim or width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def modulation(self, c: torch.Tensor) -> Modulation:
        """The six modulation tensors of condition `c` (same leading shape as c)."""
        return Modulation(**dict(zip(self.layout, self.ada(c).chunk(6, dim=-1))))

    def forward(
        self,
        x_NLD: torch.Tensor,
        mod: Modulation,
        *,
        causal: bool = False,
        cache: Optional[KVCache] = None,
        start: int = 0,
    ) -> torch.Tensor:
        """`mod` broadcasts against x (per token, or (N, 1, D) per sequence). With a cache the new
        positions attend to every cached one (no mask); `causal` masks a whole sequence."""
        n, L, d = x_NLD.shape
        h = self.norm1(x_NLD) * (1 + mod.scale1) + mod.shift1
        q, k, v = self.qkv(h).view(n, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(start, k, v)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal and cache is None)
        x_NLD = x_NLD + mod.gate1 * self.proj(a.transpose(1, 2).reshape(n, L, d))
        return x_NLD + mod.gate2 * self.mlp(self.norm2(x_NLD) * (1 + mod.scale2) + mod.shift2)
