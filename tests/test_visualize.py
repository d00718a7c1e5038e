"""The coarse-to-fine strip: each stage a smooth coarse preview of the tokens that exist, captioned."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from nestar.config import apply_overrides
from nestar.pipeline import PipelineOutput
from nestar.registry import build_model, get_preset
from nestar.tokenizers import build_tokenizer
from nestar.visualize import coarse_preview, coarse_to_fine_strip


def stages(order: str, images: torch.Tensor):
    """(token-space previews decoded, known masks) after each module, as NestAR.sample reports them.
    Lattice offset 0, so module 1 starts at the top-left corner (the geometry the tests below use)."""
    cfg = apply_overrides(get_preset("nestar-tiny"), [f"model.order={order}", "model.order_offset=0"])
    model, tok = build_model(cfg), build_tokenizer(cfg.tokenizer, 32, 1)
    tokens, g = tok.encode(images), cfg.model.grid_size
    inter, known = [], []
    for m in range(1, model.num_modules + 1):
        P, S, T = model.order.layout(m)
        inter.append(tok.decode(model.order.preview(tokens, P + T * S)))
        known.append(model.order.known_mask(P + T * S).reshape(g, g))
    return inter, known


def total_variation(x: torch.Tensor) -> float:
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()).item()


def test_preview_is_smooth_not_tiled_patches():
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1  # busy patches
    inter, known = stages("lattice", images)
    assert [int(k.sum()) for k in known] == [4, 16, 64]
    for tiled, k in zip(inter[:-1], known[:-1]):
        preview = coarse_preview(tiled, k)
        assert preview.shape == tiled.shape and preview.abs().max() <= 1
        assert total_variation(preview) < 0.1 * total_variation(tiled)  # no striped wallpaper
    assert torch.equal(coarse_preview(inter[-1], known[-1]), inter[-1])  # all known: the sample itself


def test_preview_follows_the_known_tokens():
    images = -torch.ones(1, 1, 32, 32)
    images[..., 16:, 16:] = 1  # bright bottom-right quadrant; its module-1 token sits at pixel (16, 16)
    inter, known = stages("lattice", images)
    preview = coarse_preview(inter[0], known[0])
    assert preview[..., 24:, 24:].mean() > 0.5 and preview[..., :8, :8].mean() < -0.5
    z_inter, z_known = stages("zorder", images)  # module 1 knows only the top-left block
    z = coarse_preview(z_inter[0], z_known[0])
    assert torch.all(z[..., 28:, 28:] == 0)  # far from every known token: mid-grey, not invented


def test_strip_has_a_caption_per_stage(tmp_path):
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inter, known = stages("lattice", images)
    out = PipelineOutput(images=images, intermediates=inter, sequential_steps=10, known=known)
    path = coarse_to_fine_strip(out, rows=2, per_row=2, path=tmp_path / "strip.png", scale=3)
    arr = np.asarray(Image.open(path))
    tile = 3 * (32 + 2)
    assert arr.shape[1] == 3 * tile + 6 and arr.shape[0] > 2 * tile + 6  # 3 stages x 2 rows, plus the band
    band = arr[: arr.shape[0] - (2 * tile + 6)]
    for col in range(3):  # dark caption text above each column
        assert (band[:, 6 + col * tile: (col + 1) * tile] < 128).any()
