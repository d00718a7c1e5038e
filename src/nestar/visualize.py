"""Figures: the coarse-to-fine strip (what the image looks like after each NestAR module).

A stage's decoded tokens are not a picture by themselves: after NestAR's first module only 4 of
64 tokens exist, and showing them as they come (4x4-pixel patches copied over their 16x16 blocks)
reads as wallpaper. Each stage is drawn instead as a coarse preview: the colour of every token
that exists (its patch's mean), spread smoothly over the image by normalised Gaussian weights
whose width follows the spacing of the known tokens, then upsampled bilinearly. The last stage,
where every token exists, is the sample itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from nestar.utils.images import make_grid


def stage_label(model_type: str) -> str:
    """What one generation stage of a model family is called in captions."""
    return {"nestar": "module", "nextscale": "scale"}.get(model_type, "stage")


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with zero padding (the caller normalises)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)


def _chebyshev_to_known(known: torch.Tensor) -> torch.Tensor:
    """(G, G): the Chebyshev distance, in tokens, from each position to the nearest known token."""
    g = known.shape[0]
    grid = torch.stack(torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij"), -1).reshape(
        -1, 1, 2
    )
    return (grid - torch.nonzero(known)[None]).abs().amax(-1).amin(-1).reshape(g, g)


def coarse_preview(images_BCHW: torch.Tensor, known_GG: torch.Tensor) -> torch.Tensor:
    """A readable low-resolution picture of what the known tokens say.

    `known_GG`: bool (G, G), the tokens generated so far; the image is G x G blocks of pixels, one
    per token. Unknown tokens take a distance-weighted mean of the known tokens' colours (normalised
    convolution, sigma = 0.3 x the spacing s of the known tokens); positions s or more tokens from
    every known token (z-order's unvisited quadrants) stay mid-grey. The token grid is then upsampled bilinearly. With
    every token known the images are returned unchanged.
    """
    known = known_GG.bool()
    if known.all():
        return images_BCHW
    x = images_BCHW.float()
    h, w = x.shape[-2:]
    g = known.shape[0]
    means = F.avg_pool2d(x, (h // g, w // g))  # (B, C, G, G): each token's colour
    m = known.to(x.dtype)[None, None].to(x.device)
    spacing = math.sqrt(known.numel() / max(1, int(known.sum())))
    sigma = 0.3 * spacing  # sharper reads better; much lower turns blocky again
    low = _blur(means * m, sigma) / _blur(m, sigma).clamp_min(1e-30)
    far = _chebyshev_to_known(known) >= spacing  # beyond every known token's share of the grid
    low = low.masked_fill(far.to(low.device), 0.0)
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).clamp(-1, 1)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _caption_band(
    captions: Sequence[Sequence[str]],
    col_width: int,
    pad: int,
    width: int,
    channels: int,
    font_size: int,
) -> np.ndarray:
    """A white band with one centred multi-line caption above each column."""
    font = _font(font_size)
    line_h = font_size + 3
    band = Image.new("L", (width, line_h * max(len(c) for c in captions) + 6), 255)
    draw = ImageDraw.Draw(band)
    for i, lines in enumerate(captions):
        cx = pad + i * (col_width + pad) + col_width / 2
        for j, line in enumerate(lines):
            tw = draw.textlength(line, font=font)
            draw.text((cx - tw / 2, 3 + j * line_h), line, fill=0, font=font)
    arr = np.asarray(band)[..., None]
    return np.repeat(arr, channels, axis=-1)


def coarse_to_fine_strip(
    output,
    rows: int,
    per_row: int,
    path: str | Path,
    scale: int = 3,
    stage_label: str = "module",
    captions: Optional[Sequence[Sequence[str]]] = None,
) -> Path:
    """One row per chosen sample: the coarse preview after stage 1, 2, ..., M (left to right), with
    a caption per stage ('module 1' / '4 tokens').

    `output` is a PipelineOutput (images + intermediates + known masks); the first sample of each of
    `rows` groups of `per_row` samples is shown. Stages without a known mask (models that do not
    report one) are shown as the model previewed them.
    """
    stages = output.intermediates
    known = list(getattr(output, "known", []) or [])
    picks = [r * per_row for r in range(rows)]
    views = [
        coarse_preview(st[picks], known[i]) if i < len(known) else st[picks]
        for i, st in enumerate(stages)
    ]
    tiles = torch.stack([views[s][j] for j in range(len(picks)) for s in range(len(stages))])
    if captions is None:
        captions = [
            [f"{stage_label} {i + 1}"]
            + ([f"{int(known[i].sum())} tokens"] if i < len(known) else [])
            for i in range(len(stages))
        ]
    pad = 2
    grid = make_grid(tiles, nrow=len(stages), pad=pad)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)  # nearest-neighbour upscale
    col_w = tiles.shape[-1] * scale
    band = _caption_band(
        captions, col_w, pad * scale, grid.shape[1], grid.shape[2], font_size=max(9, 4 * scale)
    )
    image = np.concatenate([band, grid], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    return path
