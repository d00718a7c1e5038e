"""Image utilities (no torchvision): tensor <-> uint8, grids and PNG output with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images_BCHW: torch.Tensor) -> np.ndarray:
    """[-1, 1] float images -> uint8 array (B, H, W, C)."""
    x = ((images_BCHW.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(
    images_BCHW: torch.Tensor, nrow: int, pad: int = 2, pad_value: int = 255
) -> np.ndarray:
    """Tile images ([-1, 1], B x C x H x W) into one uint8 array with `nrow` images per row."""
    arr = to_uint8(images_BCHW)
    b, h, w, c = arr.shape
    ncol = nrow
    nrows = (b + ncol - 1) // ncol
    grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(b):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def save_png(array_HWC: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Save a uint8 (H, W, C) array as PNG, optionally upscaled by nearest neighbour."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array_HWC[..., 0] if array_HWC.shape[-1] == 1 else array_HWC)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def save_grid(images_BCHW: torch.Tensor, path: str | Path, nrow: int, scale: int = 1) -> Path:
    """Save images as one PNG grid."""
    return save_png(make_grid(images_BCHW, nrow), path, scale=scale)
