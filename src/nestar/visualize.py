"""Figures: the coarse-to-fine strip (what the image looks like after each NestAR module)."""
from __future__ import annotations

from pathlib import Path

import torch

from nestar.utils.images import save_grid


def coarse_to_fine_strip(output, rows: int, per_row: int, path: str | Path, scale: int = 3) -> Path:
    """One row per chosen sample: the preview after module 1, 2, ..., M (left to right).

    `output` is a PipelineOutput (images + intermediates); the first sample of each of `rows`
    groups of `per_row` samples is shown.
    """
    stages = output.intermediates
    picks = [r * per_row for r in range(rows)]
    tiles = [stage[i] for i in picks for stage in stages]
    return save_grid(torch.stack(tiles), path, nrow=len(stages), scale=scale)
