"""ARINAR baseline (SPEC section 3): MAR's masked-AR outer model + an inner AR over each token's channels.

Outer model (MAR's encoder-decoder, bidirectional, no KV cache possible):
- `buffer_size` leading buffer tokens all hold the class embedding (null class = `num_classes`,
  label dropout at training); known tokens are embedded by a Linear plus a learned position.
- The encoder sees [buffer; known tokens] only (masked tokens are dropped, so every image of a
  batch must hide the same number of tokens); the decoder sees [buffer; all positions], with a
  learned mask token at the unknown ones. z = decoder output + a learned per-position embedding.
- Training: one mask ratio per batch from a normal(mean 1, sd 0.25) truncated to [0.7, 1], a random
  order per image; the loss (the head's NLL) covers masked tokens only.
- Sampling: a random order per image from the generator; `num_iter` steps (default 64, capped at the
  number of tokens) on a cosine schedule, remaining(s) = floor(N cos(pi/2 (s+1)/S)), forced so that
  every step reveals at least one token; guidance is linear in the share of tokens known after the
  step (`cfg_scale`), and both branches are run as one doubled batch only when cfg != 1.

The outer part (`MaskedARBackbone`, `MaskedARModel`, `mask_schedule`, `random_orders`,
`truncnorm_mask_ratio`) does not depend on the head: `MaskedARModel` takes any `Head`, so a MAR
baseline with the flow head is `MaskedARModel` plus a FlowMLPHead. ARINAR = MaskedARModel + GMMARHead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from nestar.config import check_min
from nestar.heads.base import Head
from nestar.heads.gmm_ar import GMMARHead, GMMHeadConfig
from nestar.models.base import GenerativeModel, SampleOutput, cfg_scale
from nestar.models.layers import Transformer


# ----- shared masked-AR machinery -----------------------------------------------------------------
def truncnorm_mask_ratio(low: float = 0.7, high: float = 1.0, mean: float = 1.0, std: float = 0.25, generator: Optional[torch.Generator] = None) -> float:
    """One draw from N(mean, std^2) truncated to [low, high] (inverse-CDF method)."""
    a, b = (low - mean) / std, (high - mean) / std
    cdf = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    p = cdf(a) + u * (cdf(b) - cdf(a))
    val = mean + std * torch.special.ndtri(torch.tensor(p, dtype=torch.float64)).item()
    return min(max(val, low), high)


def random_orders(batch: int, n: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
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

    def __init__(self, grid_size: int, token_dim: int, num_classes: int, dim: int, enc_depth: int, dec_depth: int,
                 heads: int, mlp_ratio: float = 4.0, buffer_size: int = 8):
        super().__init__()
        n = grid_size * grid_size
        self.num_tokens, self.buffer_size, self.dim = n, buffer_size, dim
        self.class_emb = nn.Embedding(num_classes + 1, dim)  # last id = null class
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

    def forward(self, tokens_BNC: torch.Tensor, mask_BN: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        """z (B, N, dim) at every position; `mask_BN` True = unknown (same count in every row)."""
        B, n, _ = tokens_BNC.shape
        buf = self.buffer_size
        x = self.token_in(tokens_BNC)
        cls = self.class_emb(labels_B)[:, None, :].expand(B, buf, -1)
        x = self.token_in_norm(torch.cat([cls, x], dim=1) + self.enc_pos)
        keep = torch.cat([torch.ones(B, buf, dtype=torch.bool, device=x.device), ~mask_BN], dim=1)
        num_keep = int(keep[0].sum())
        if int(keep.sum()) != B * num_keep:
            raise ValueError("every image of a batch must hide the same number of tokens (MAR's encoder drops them)")
        h = self.encoder(x[keep].view(B, num_keep, self.dim), None)
        h = self.dec_in(h)
        full = self.mask_token.to(h.dtype).expand(B, buf + n, self.dim).clone()
        full[keep] = h.reshape(-1, self.dim)
        out = self.decoder(full + self.dec_pos, None)
        return out[:, buf:] + self.z_pos


class MaskedARModel(GenerativeModel):
    """Masked AR generation with any per-token head (subclasses build `backbone` and `head`).

    The config must provide grid_size, token_dim, num_classes, label_dropout, mask_ratio_min,
    mask_ratio_std and num_iter.
    """

    backbone: MaskedARBackbone
    head: Head

    def sequential_steps(self, num_iter: Optional[int] = None) -> int:
        return len(mask_schedule(self.backbone.num_tokens, num_iter or self.config.num_iter))

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens_BNC, labels_B = batch["tokens"], batch["labels"]
        cfg = self.config
        B, n, _ = tokens_BNC.shape
        labels_B = self.drop_labels(labels_B, cfg.label_dropout)
        ratio = truncnorm_mask_ratio(cfg.mask_ratio_min, 1.0, 1.0, cfg.mask_ratio_std)
        num_masked = max(1, min(n, math.ceil(n * ratio)))
        orders = random_orders(B, n, None, tokens_BNC.device)
        mask = mask_from_orders(orders, num_masked)
        z = self.backbone(tokens_BNC, mask, labels_B)
        loss = self.head.loss(tokens_BNC[mask], z[mask])
        return {"loss": loss, "mask_ratio": torch.tensor(num_masked / n)}

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
        num_iter: Optional[int] = None,
        num_previews: int = 4,
    ) -> SampleOutput:
        """Generate tokens for `labels`. `num_steps` goes to the head (ignored by the GMM head);
        `num_iter` overrides the number of outer steps. Previews show known tokens, zeros elsewhere."""
        labels = self.check_labels(labels)
        B, n, C = labels.shape[0], self.backbone.num_tokens, self.config.token_dim
        guided = cfg != 1.0
        lab = torch.cat([labels, torch.full_like(labels, self.num_classes)]) if guided else labels
        dev = self.device
        dtype = next(self.parameters()).dtype
        schedule = mask_schedule(n, num_iter or self.config.num_iter)
        S = len(schedule)
        orders = random_orders(B, n, generator, dev)
        tokens = torch.zeros(B, n, C, device=dev, dtype=dtype)
        mask = torch.ones(B, n, dtype=torch.bool, device=dev)
        preview_at = {max(0, round(S * (i + 1) / num_previews) - 1) for i in range(num_previews)} if num_previews else set()
        intermediates = []
        for s, remaining in enumerate(schedule):
            tok_in = torch.cat([tokens, tokens]) if guided else tokens
            mask_in = torch.cat([mask, mask]) if guided else mask
            z = self.backbone(tok_in, mask_in, lab)
            mask_next = mask_from_orders(orders, remaining)
            to_pred = mask & ~mask_next
            k = int(to_pred[0].sum())
            if guided:
                z_c, z_u = z[:B][to_pred], z[B:][to_pred]
            else:
                z_c, z_u = z[to_pred], None
            w = cfg_scale(cfg, cfg_schedule, (n - remaining) / n)
            x = self.head.sample(z_c, z_uncond_NZ=z_u, cfg=w, num_steps=num_steps, temperature=temperature, generator=generator)
            tokens[to_pred] = x.view(B * k, C).to(dtype)
            mask = mask_next
            if s in preview_at:
                intermediates.append(tokens.clone())
        return SampleOutput(tokens=tokens, intermediates=intermediates, sequential_steps=S)


# ----- configs ---------------------------------------------------------------------------------
@dataclass
class MaskedARConfig:
    """Outer-model fields shared by MAR and ARINAR. `grid_size`, `token_dim`, `num_classes` are set
    from the data and tokenizer.

    Encoder/decoder of width `dim` with `enc_depth` + `dec_depth` blocks (attention heads of size
    `head_dim`), `buffer_size` class tokens; training mask ratio from N(1, mask_ratio_std^2)
    truncated to [mask_ratio_min, 1]; `num_iter` outer sampling steps.
    """

    grid_size: int = 16
    token_dim: int = 4
    num_classes: int = 10
    dim: int = 256
    enc_depth: int = 12
    dec_depth: int = 12
    head_dim: int = 64
    mlp_ratio: float = 4.0
    buffer_size: int = 64
    label_dropout: float = 0.1
    mask_ratio_min: float = 0.7
    mask_ratio_std: float = 0.25
    num_iter: int = 64

    def __post_init__(self) -> None:
        if self.grid_size < 1 or self.token_dim < 1:
            raise ValueError("model.grid_size and model.token_dim must be >= 1")
        check_min("model.", 1, dim=self.dim, head_dim=self.head_dim)
        check_min("model.", 0, enc_depth=self.enc_depth, dec_depth=self.dec_depth)
        if self.dim % self.head_dim:
            raise ValueError(f"model.dim {self.dim} is not divisible by model.head_dim {self.head_dim}")
        if not 0 < self.mask_ratio_min <= 1:
            raise ValueError(f"model.mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")
        if self.num_iter < 1:
            raise ValueError(f"model.num_iter must be >= 1, got {self.num_iter}")
        if self.buffer_size < 1:
            raise ValueError(f"model.buffer_size must be >= 1, got {self.buffer_size}")


@dataclass
class ARINARConfig(MaskedARConfig):
    """ARINAR: the masked-AR outer model (MaskedARConfig) and the inner-AR GMM `head` (GMMHeadConfig)."""

    enc_depth: int = 6
    dec_depth: int = 6
    buffer_size: int = 8
    head: GMMHeadConfig = field(default_factory=GMMHeadConfig)


# ----- ARINAR ---------------------------------------------------------------------------------
class ARINAR(MaskedARModel):
    """ARINAR: masked-AR outer model, inner AR over channels with a K-component GMM per channel."""

    def __init__(self, cfg: ARINARConfig):
        super().__init__()
        self.config, self.num_classes = cfg, cfg.num_classes
        self.backbone = MaskedARBackbone(cfg.grid_size, cfg.token_dim, cfg.num_classes, cfg.dim, cfg.enc_depth,
                                         cfg.dec_depth, cfg.dim // cfg.head_dim, cfg.mlp_ratio, cfg.buffer_size)
        self.head = GMMARHead(cfg.token_dim, cfg.dim, cfg.head)
