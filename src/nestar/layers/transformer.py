"""Transformer layers with SDPA attention and a preallocated KV cache (gpt-fast style)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class KVCache(nn.Module):
    """Fixed-size K/V buffers; `update` writes at [start, start+n) and returns the filled prefix."""

    def __init__(
        self,
        batch: int,
        heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        super().__init__()
        shape = (batch, heads, max_len, head_dim)
        self.k_BHLD = torch.zeros(shape, dtype=dtype, device=device)
        self.v_BHLD = torch.zeros(shape, dtype=dtype, device=device)

    def update(
        self, start: int, k_BHnD: torch.Tensor, v_BHnD: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k_BHnD.shape[2]
        if end > self.k_BHLD.shape[2]:
            raise RuntimeError(
                f"KV cache overflow: writing up to {end} > capacity {self.k_BHLD.shape[2]}"
            )
        self.k_BHLD[:, :, start:end] = k_BHnD
        self.v_BHLD[:, :, start:end] = v_BHnD
        return self.k_BHLD[:, :, :end], self.v_BHLD[:, :, :end]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by the number of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x_BLD: torch.Tensor,
        mask_LS: Optional[torch.Tensor],
        cache: Optional[KVCache] = None,
        start: int = 0,
    ) -> torch.Tensor:
        b, n, d = x_BLD.shape
        q, k, v = self.qkv(x_BLD).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(start, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_LS)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor],
        cache: Optional[KVCache] = None,
        start: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask, cache, start)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of blocks plus a final norm; `new_caches` allocates one KVCache per block."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(_init_weights)
        for blk in self.blocks:  # GPT-2 style scaled init of residual projections
            nn.init.normal_(blk.attn.proj.weight, std=0.02 / (2 * depth) ** 0.5)
            nn.init.normal_(blk.mlp[2].weight, std=0.02 / (2 * depth) ** 0.5)

    def forward(
        self,
        x_BLD: torch.Tensor,
        mask: Optional[torch.Tensor],
        caches: Optional[list[KVCache]] = None,
        start: int = 0,
    ) -> torch.Tensor:
        for i, blk in enumerate(self.blocks):
            x_BLD = blk(x_BLD, mask, caches[i] if caches is not None else None, start)
        return self.norm(x_BLD)

    def new_caches(
        self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device
    ) -> list[KVCache]:
        return [
            KVCache(batch, self.heads, max_len, self.dim // self.heads, dtype, device)
            for _ in self.blocks
        ]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
