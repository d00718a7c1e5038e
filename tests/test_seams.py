"""The seam statistic on constructed images with and without seams at known token borders."""
import math

import pytest
import torch

from nestar.evaluation.seams import seam_statistic


def _smooth(b: int = 8, size: int = 32) -> torch.Tensor:
    """Foreground everywhere, a random smooth field with no preferred grid."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(b, 1, 5, 5, generator=g) * 1.2 - 0.4
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=True).clamp(-0.8, 1)


def test_smooth_images_score_near_one():
    assert seam_statistic(_smooth(), 4) == pytest.approx(1.0, abs=0.15)


def test_steps_at_the_token_borders_raise_the_statistic_by_their_size():
    x = _smooth()
    g = torch.Generator().manual_seed(1)
    # a constant offset per 4x4 token: pixel steps appear only across token borders
    offsets = torch.rand(x.shape[0], 1, 8, 8, generator=g) * 0.4 - 0.2
    seamed = x + offsets.repeat_interleave(4, 2).repeat_interleave(4, 3)
    base, s = seam_statistic(x, 4), seam_statistic(seamed, 4)
    assert s > base + 1.0
    # on an 8-pixel grid half of the 4-pixel borders count as inner steps: a weaker ratio
    assert seam_statistic(seamed, 8) < s


def test_background_pairs_do_not_count():
    x = _smooth()
    with_empty = torch.cat([x, torch.full_like(x, -1.0)])  # all-background images add no pairs
    assert seam_statistic(with_empty, 4) == pytest.approx(seam_statistic(x, 4), rel=1e-6)


def test_all_background_is_nan_and_bad_patch_size_raises():
    assert math.isnan(seam_statistic(torch.full((2, 1, 8, 8), -1.0), 4))
    with pytest.raises(ValueError, match="patch_size"):
        seam_statistic(torch.zeros(1, 1, 8, 8), 1)
