"""Seam statistic: how much larger pixel steps are across token borders than inside tokens.

A model that emits pixel-patch tokens which do not join up leaves steps at the patch borders. For
each pair of horizontally or vertically adjacent pixels we take |x_a - x_b|; pairs that straddle a
token border (patch size p) are "border" pairs, the others "inner" pairs. Only foreground pairs
count (either pixel above `threshold`), since an all-background border is trivially smooth. The
statistic is mean(border) / mean(inner): natural images have no preferred grid and sit near 1
(Fashion-MNIST test images: ~0.9, lower than 1 because the garment outlines fall inside tokens as
often as on borders while the flat background edges do not count); a patchwork sits above.
"""

from __future__ import annotations

import torch


def _pair_sums(
    d: torch.Tensor, fg: torch.Tensor, border: torch.Tensor
) -> tuple[float, float, float, float]:
    """Sums and counts of foreground |differences| on border and inner positions."""
    w = fg.to(d.dtype)
    b = border.to(d.dtype)
    return (
        float((d * w * b).sum()),
        float((w * b).sum()),
        float((d * w * (1 - b)).sum()),
        float((w * (1 - b)).sum()),
    )


def seam_statistic(images_BCHW: torch.Tensor, patch_size: int, threshold: float = -0.9) -> float:
    """mean |pixel step| across token borders / within tokens, foreground pairs only.

    `images_BCHW` in [-1, 1] (background -1 on Fashion-MNIST); `patch_size` is the tokenizer's.
    Returns nan when there are no foreground pairs of either kind.
    """
    if patch_size < 2:
        raise ValueError(f"seam statistic needs patch_size >= 2, got {patch_size}")
    x = images_BCHW.detach().float().cpu()
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(x.shape)}")
    x = x.mean(1)  # channels: one step per pixel pair
    H, W = x.shape[-2:]
    dh = (x[..., :, 1:] - x[..., :, :-1]).abs()
    fgh = torch.maximum(x[..., :, 1:], x[..., :, :-1]) > threshold
    bh = ((torch.arange(W - 1) + 1) % patch_size == 0)[None, None, :].expand_as(dh)
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs()
    fgv = torch.maximum(x[..., 1:, :], x[..., :-1, :]) > threshold
    bv = ((torch.arange(H - 1) + 1) % patch_size == 0)[None, :, None].expand_as(dv)
    sb, nb, si, ni = (a + b for a, b in zip(_pair_sums(dh, fgh, bh), _pair_sums(dv, fgv, bv)))
    if nb == 0 or ni == 0 or si == 0:
        return float("nan")
    return (sb / nb) / (si / ni)


__all__ = ["seam_statistic"]
