"""Masked AR (MAR's outer model), shared by the MAR and ARINAR baselines; they differ only in the head.

Outer model (MAR's encoder-decoder, bidirectional, so no KV cache is possible):
- `buffer_size` leading buffer tokens all hold the class embedding (null class = `num_classes`,
  label dropout at training); known tokens are embedded by a Linear plus a learned position.
- The encoder sees [buffer; known tokens] only (masked tokens are dropped, so every image of a
  batch must hide the same number of tokens); the decoder sees [buffer; all positions], with a
  learned mask token at the unknown ones. z = decoder output + a learned per-position embedding.
- Training: one mask ratio per batch from a normal(mean 1, sd 0.25) truncated to [0.7, 1], a random
  order per image; the head's loss covers masked tokens only.
- Sampling: a random order per image from the generator; `num_iter` steps (default 64, capped at the
  number of tokens) on a cosine schedule, remaining(s) = floor(N cos(pi/2 (s+1)/S)), forced so that
  every step reveals at least one token; guidance is linear in the share of tokens known after the
  step (`cfg_schedule='linear'`), and both branches are run as one doubled batch only when
  guidance_scale != 1.

`MaskedARModel(config, make_head)` takes any `Head`: MAR = a flow head (models/mar.py), ARINAR = the
inner-AR GMM head (models/arinar.py). See docs/design.md, "Baselines".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from nestar.config import check_min
from nestar.heads.base import Head
from nestar.layers import ClassEmbedding, Transformer
from nestar.models.base import GenerativeModel, GuidedBatch, SampleOutput, TokenModelConfig


# ----- shared masked-AR machinery -----------------------------------------------------------------
def truncnorm_mask_ratio(
    low: float = 0.7,
    high: float = 1.0,
    mean: float = 1.0,
    std: float = 0.25,
    generator: Optional[torch.Generator] = None,
) -> float:
    """One draw from N(mean, std^2) truncated to [low, high] (inverse-CDF method)."""
    a, b = (low - mean) / std, (high - mean) / std
    cdf = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    p = cdf(a) + u * (cdf(b) - cdf(a))
    val = mean + std * torch.special.ndtri(torch.tensor(p, dtype=torch.float64)).item()
    return min(max(val, low), high)


def random_orders(
    batch: int, n: int, generator: Optional[torch.Generator], device: torch.device
) -> torch.Tensor:
    """(batch, n) independent random permutations of range(n), drawn from `generator`."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(batch, n, generator=generator, device=gen_device).argsort(dim=1).to(device)


def mask_from_orders(orders_BN: torch.Tensor, num_masked: int) -> torch.Tensor:
    """Bool (B, N), True at the LAST `num_masked` positions of each order (they stay unknown)."""
    B, n = orders_BN.shape
    mask = torch.zeros(B, n, dtype=torch.bool, device=orders_BN.device)
    if num_masked > 0:
        mask.scatter_(1, orders_BN[:, n - num_masked :], True)
    return mask


def mask_schedule(n: int, num_iter: int) -> list[int]:
    """Tokens still unknown after each step: MAR's cosine schedule, at least one token per step.

    remaining(s) = floor(n cos(pi/2 (s+1)/S)), clamped to [S-1-s, remaining(s-1) - 1]; the last is 0.
    `num_iter` is capped at n (a step must reveal something).
    """
    S = max(1, min(num_iter, n))
    out, prev = [], n
    for s in range(S):
        r = math.floor(n * math.cos(math.pi / 2 * (s + 1) / S))
        r = 0 if s == S - 1 else min(prev - 1, max(S - 1 - s, r))
        out.append(r)
        prev = r
    return out


class MaskedARBackbone(nn.Module):
    """MAR's bidirectional encoder-decoder: (tokens, mask, labels) -> per-position conditions z."""

    def __init__(
        self,
        grid_size: int,
        token_dim: int,
        num_classes: int,
        dim: int,
        enc_depth: int,
        dec_depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        buffer_size: int = 8,
    ):
        super().__init__()
        n = grid_size * grid_size
        self.num_tokens, self.buffer_size, self.dim = n, buffer_size, dim
        self.class_emb = ClassEmbedding(num_classes, dim)
        self.token_in = nn.Linear(token_dim, dim)
        self.token_in_norm = nn.LayerNorm(dim, eps=1e-6)
        self.enc_pos = nn.Parameter(torch.zeros(buffer_size + n, dim))
        self.encoder = Transformer(dim, enc_depth, heads, mlp_ratio)
        self.dec_in = nn.Linear(dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.dec_pos = nn.Parameter(torch.zeros(buffer_size + n, dim))
        self.decoder = Transformer(dim, dec_depth, heads, mlp_ratio)
        self.z_pos = nn.Parameter(torch.zeros(n, dim))  # MAR's diffusion_pos_embed_learned
        for p in (self.enc_pos, self.mask_token, self.dec_pos, self.z_pos, self.class_emb.weight):
            nn.init.trunc_normal_(p, std=0.02)
        for m in (self.token_in, self.dec_in):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(
        self, tokens_BNC: torch.Tensor, mask_BN: torch.Tensor, labels_B: torch.Tensor
    ) -> torch.Tensor:
        """z (B, N, dim) at every position; `mask_BN` True = unknown (same count in every row)."""
        B, n, _ = tokens_BNC.shape
        buf = self.buffer_size
        x = self.token_in(tokens_BNC)
        cls = self.class_emb(labels_B)[:, None, :].expand(B, buf, -1)
        x = self.token_in_norm(torch.cat([cls, x], dim=1) + self.enc_pos)
        keep = torch.cat([torch.ones(B, buf, dtype=torch.bool, device=x.device), ~mask_BN], dim=1)
        num_keep = int(keep[0].sum())
        if int(keep.sum()) != B * num_keep:
            raise ValueError(
                "every image of a batch must hide the same number of tokens (MAR's encoder drops them)"
            )
        h = self.encoder(x[keep].view(B, num_keep, self.dim), None)
        h = self.dec_in(h)
        full = self.mask_token.to(h.dtype).expand(B, buf + n, self.dim).clone()
        full[keep] = h.reshape(-1, self.dim)
        out = self.decoder(full + self.dec_pos, None)
        return out[:, buf:] + self.z_pos


class MaskedARModel(GenerativeModel):
    """Masked AR generation: MAR's encoder/decoder (`backbone`) and any per-token `head`.

    `make_head` builds the head; it is called after the backbone is built, so a seed gives the
    backbone the same weights whatever the head.
    """

    def __init__(self, config: MaskedARConfig, make_head: Callable[[], Head]):
        super().__init__()
        self.config, self.num_classes = config, config.num_classes
        self.backbone = MaskedARBackbone(
            config.grid_size,
            config.token_dim,
            config.num_classes,
            config.dim,
            config.enc_depth,
            config.dec_depth,
            config.dim // config.head_dim,
            config.mlp_ratio,
            config.buffer_size,
        )
        self.head = make_head()

    def transformers(self) -> list[Transformer]:
        return [self.backbone.encoder, self.backbone.decoder]

    def backbone_modules(self) -> list[nn.Module]:
        return [self.backbone]  # one evaluation runs the encoder and the decoder

    def sequential_steps(self, num_iter: Optional[int] = None) -> int:
        return len(mask_schedule(self.backbone.num_tokens, num_iter or self.config.num_iter))

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens_BNC, labels_B = batch["tokens"], batch["labels"]
        config = self.config
        B, n, _ = tokens_BNC.shape
        labels_B = self.drop_labels(labels_B, config.label_dropout)
        ratio = truncnorm_mask_ratio(config.mask_ratio_min, 1.0, 1.0, config.mask_ratio_std)
        num_masked = max(1, min(n, math.ceil(n * ratio)))
        orders = random_orders(B, n, None, tokens_BNC.device)
        mask = mask_from_orders(orders, num_masked)
        z = self.backbone(tokens_BNC, mask, labels_B)
        loss = self.head.loss(tokens_BNC[mask], z[mask])
        return {"loss": loss, "mask_ratio": torch.tensor(num_masked / n)}

    def _sample(
        self, run: GuidedBatch, *, num_iter: Optional[int] = None, num_previews: int = 4
    ) -> SampleOutput:
        """Unmask tokens on the cosine schedule in a random order per image. `num_iter` overrides the
        number of outer steps; `num_previews` snapshots (known tokens, zeros elsewhere)."""
        B, n, C = run.batch, self.backbone.num_tokens, self.config.token_dim
        schedule = mask_schedule(n, num_iter or self.config.num_iter)
        S = len(schedule)
        orders = random_orders(B, n, run.generator, run.device)
        tokens = torch.zeros(B, n, C, device=run.device, dtype=run.dtype)
        mask = torch.ones(B, n, dtype=torch.bool, device=run.device)
        preview_at = {max(0, round(S * (i + 1) / num_previews) - 1) for i in range(num_previews)}
        intermediates = []
        for s, remaining in enumerate(schedule):
            z = self.backbone(run.double(tokens), run.double(mask), run.batch_labels)
            mask_next = mask_from_orders(orders, remaining)
            to_pred = mask & ~mask_next
            x = run.draw(self.head, z, (n - remaining) / n, rows=to_pred)
            tokens[to_pred] = x.reshape(-1, C)
            mask = mask_next
            if s in preview_at:
                intermediates.append(tokens.clone())
        return SampleOutput(tokens=tokens, intermediates=intermediates, sequential_steps=S)


# ----- configs ---------------------------------------------------------------------------------
@dataclass
class MaskedARConfig(TokenModelConfig):
    """Outer-model fields shared by MAR and ARINAR (with TokenModelConfig's).

    Encoder/decoder of width `dim` with `enc_depth` + `dec_depth` blocks, `buffer_size` class tokens;
    training mask ratio from N(1, mask_ratio_std^2) truncated to [mask_ratio_min, 1]; `num_iter`
    outer sampling steps.
    """

    enc_depth: int = 12
    dec_depth: int = 12
    buffer_size: int = 64
    mask_ratio_min: float = 0.7
    mask_ratio_std: float = 0.25
    num_iter: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min("model.", 0, enc_depth=self.enc_depth, dec_depth=self.dec_depth)
        check_min("model.", 1, num_iter=self.num_iter, buffer_size=self.buffer_size)
        if not 0 < self.mask_ratio_min <= 1:
            raise ValueError(f"model.mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")
