"""The interface every generator in nestar implements (NestAR and the baselines)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

CFG_SCHEDULES = ("constant", "linear")


@dataclass
class SampleOutput:
    """Sampled tokens (B, L, C) in raster order, previews after each stage, and the step count."""

    tokens: torch.Tensor
    intermediates: list[torch.Tensor] = field(default_factory=list)
    sequential_steps: int = 0


def cfg_scale(cfg: float, schedule: str, progress: float) -> float:
    """Guidance weight at generation progress in (0, 1] (share of tokens known after the step).

    'constant': cfg everywhere. 'linear': 1 + (cfg - 1) * progress (MAR/VAR style), so early
    coarse steps are nearly unguided and the last step gets the full weight.
    """
    if schedule == "constant":
        return cfg
    if schedule == "linear":
        return 1.0 + (cfg - 1.0) * progress
    raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {schedule!r}")


class GenerativeModel(nn.Module):
    """Class-conditional token generator.

    `loss(batch)` takes {'tokens': (B, L, C) raster tokens, 'labels': (B,) int64} and returns a dict
    with the scalar 'loss' and per-part diagnostics; `sample(labels, ...)` returns a SampleOutput.
    Class id `num_classes` is the null class used for label dropout and guidance.
    """

    config: object
    num_classes: int

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        *,
        cfg: float = 1.0,
        cfg_schedule: str = "linear",
        temperature: float = 1.0,
        num_steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> SampleOutput:
        raise NotImplementedError

    def sequential_steps(self) -> int:
        """Sequential backbone evaluations needed for one image."""
        raise NotImplementedError

    def drop_labels(self, labels: torch.Tensor, p: float) -> torch.Tensor:
        """Replace each label by the null class with probability p (training only)."""
        if not self.training or p <= 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < p
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        if labels.ndim != 1 or (labels < 0).any() or (labels >= self.num_classes).any():
            raise ValueError(f"labels must be a 1-D tensor of ints in [0, {self.num_classes}), got {labels.tolist()}")
        return labels

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
