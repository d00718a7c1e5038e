"""Generation orders of NestAR: which grid position is the j-th token generated.

Both orders are Morton (quadtree) orders; they differ in which coordinates are interleaved:
- `zorder`: Morton order of (row, col). The first k^m tokens are a contiguous top-left block and
  each later patch is a neighbouring block.
- `lattice`: Morton order of the *bit-reversed* (row, col). The first k^m tokens are a full
  sub-lattice of the grid (coarse image first); each later patch is an interleaved offset
  sub-lattice, so every new token is surrounded by known ones.
With k = 4 one module doubles the resolution in both axes; with k = 2 it alternates columns and rows.
An `offset` shifts either order cyclically, so that the first tokens sit at (offset, offset) + the
sub-lattice instead of the top-left corners (which are background on centred datasets).
"""

from __future__ import annotations

import math

import torch

ORDERS = ("lattice", "zorder")


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _reverse_bits(x: int, bits: int) -> int:
    return int(format(x, f"0{bits}b")[::-1], 2) if bits else 0


def _interleave(r: int, c: int, bits: int) -> int:
    """Morton key: column bit i at position 2i, row bit i at 2i+1 (row bits more significant)."""
    key = 0
    for i in range(bits):
        key |= ((c >> i) & 1) << (2 * i) | ((r >> i) & 1) << (2 * i + 1)
    return key


def num_modules(num_tokens: int, k: int) -> int:
    """M with k^M == num_tokens; raises ValueError with the reason when there is none."""
    if k < 2:
        raise ValueError(f"k must be >= 2, got k={k}")
    m = round(math.log(num_tokens, k))
    if k**m != num_tokens:
        raise ValueError(
            f"impossible NestAR layout: {num_tokens} tokens is not a power of k={k} "
            f"(k^M must equal the number of tokens; e.g. an 8x8 or 16x16 grid with k=2 or 4)"
        )
    return m


class GenerationOrder:
    """Permutation of a square token grid (side a power of 2) into NestAR generation order."""

    def __init__(self, grid_size: int, k: int, kind: str = "lattice", offset: int = 0):
        if kind not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {kind!r}")
        if not _is_pow2(grid_size):
            raise ValueError(
                f"NestAR needs a square token grid whose side is a power of 2, got {grid_size}"
            )
        if not _is_pow2(k):
            raise ValueError(
                f"NestAR's k must be a power of 2 for a square power-of-2 grid, got k={k}"
            )
        if not 0 <= offset < grid_size:
            raise ValueError(f"order offset must be in [0, {grid_size}), got {offset}")
        self.grid_size, self.k, self.kind, self.offset = grid_size, k, kind, offset
        self.num_tokens = grid_size * grid_size
        self.num_modules = num_modules(self.num_tokens, k)
        bits = grid_size.bit_length() - 1
        keys = []
        for r in range(grid_size):
            for c in range(grid_size):
                # the offset shifts the grid cyclically: the first token sits at (offset, offset)
                r0, c0 = (r - offset) % grid_size, (c - offset) % grid_size
                rr, cc = (
                    (_reverse_bits(r0, bits), _reverse_bits(c0, bits))
                    if kind == "lattice"
                    else (r0, c0)
                )
                keys.append(_interleave(rr, cc, bits))
        # perm[j] = raster index of the j-th generated token
        self.perm = torch.argsort(torch.tensor(keys))
        self.inv_perm = torch.argsort(self.perm)
        self._bits = bits

    def layout(self, m: int) -> tuple[int, int, int]:
        """(prefix length P, patch size S, number of patches T) of module m (1-based).

        Module 1 generates k single tokens from nothing; module m > 1 takes the first k^(m-1)
        tokens as its first patch and generates k-1 patches of k^(m-1) tokens.
        """
        if not 1 <= m <= self.num_modules:
            raise ValueError(f"module index {m} out of range 1..{self.num_modules}")
        if m == 1:
            return 0, 1, self.k
        p = self.k ** (m - 1)
        return p, p, self.k - 1

    def sequential_steps(self) -> int:
        """k + (M-1)(k-1) = M(k-1) + 1 network evaluations per image."""
        return self.num_modules * (self.k - 1) + 1

    def strides(self, num_known: int) -> tuple[int, int]:
        """(row, column) spacing of the first `num_known` (a power of 2) tokens: 1 for z-order."""
        if self.kind == "zorder":
            return 1, 1
        b = (num_known - 1).bit_length()  # num_known = 2^b
        return 1 << (self._bits - b // 2), 1 << (self._bits - (b + 1) // 2)

    def known_mask(self, num_known: int) -> torch.Tensor:
        """bool (N,) in raster order: True at the first `num_known` positions of the order."""
        known = torch.zeros(self.num_tokens, dtype=torch.bool)
        known[self.perm[:num_known]] = True
        return known

    def preview(self, tokens_BLC: torch.Tensor, num_known: int) -> torch.Tensor:
        """A raster token grid showing only the first `num_known` generated tokens.

        Lattice: each unknown position copies its sub-lattice anchor (a blocky low-res image).
        Z-order: unknown positions are 0 (mid-grey for pixel tokens).
        """
        g = self.grid_size
        known = self.known_mask(num_known)
        if self.kind == "zorder":
            return tokens_BLC * known.to(tokens_BLC.device)[None, :, None]
        sr, sc = self.strides(num_known)
        o = self.offset
        r = (torch.arange(g)[:, None].expand(g, g) - o) % g
        c = (torch.arange(g)[None, :].expand(g, g) - o) % g
        src = (((r - r % sr + o) % g) * g + (c - c % sc + o) % g).reshape(-1).to(tokens_BLC.device)
        return tokens_BLC[:, src]
