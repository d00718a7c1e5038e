"""Next-scale baseline, FlowAR-style (docs/design.md, "Baselines"): coarse-to-fine token pyramids, one scale per step.

Scales: side lengths 1, 2, 4, ..., G (G = grid_size, a power of two), S = log2(G) + 1 of them,
T = sum of side^2 tokens (341 for G = 16). The target of scale k is the token grid area-downsampled
to 2^k x 2^k (F.interpolate mode 'area' = average pooling over 2^(L-k) blocks); the last scale is the
token grid itself, so the sample is exactly the finest scale.

Sequence (length c + T, c = `num_cond_tokens`):
    [cond_1 .. cond_c ; inputs of scale 0 ; inputs of scale 1 ; ... ; inputs of scale L]
- condition tokens: class embedding (null class = `num_classes`) + a learned position;
- scale 0 has one input, a learned start token;
- scale k > 0: the tokens of scale k - 1 upsampled to 2^k x 2^k (the "next-scale" input trick:
  FlowAR's default `upsample='flowar'` is bicubic up to G x G then area down to 2^k x 2^k), embedded
  by a Linear; ground truth at training, generated tokens at sampling;
- every input adds a learned absolute position (one per pyramid slot) and a level embedding.
Attention is block-causal over scales: scale k sees the condition tokens and scales <= k (its own
scale bidirectionally); condition tokens see only each other. Since scale k's inputs come from
scale k - 1, the conditions of scale k depend only on the label and on scales < k.

Head: the same per-token FlowMLPHead as NestAR; token (k, j) gets z = z_out(h) + z_level[k], so the
head knows the scale. (FlowAR itself uses a transformer flow head across a scale's tokens; the
per-token MLP keeps the head identical across all models in this comparison.)

Training: flow loss per scale; `scale_loss_weighting='tokens'` weights scale k by its token count
(FlowAR's i^2 / G^2 weighting up to a constant), 'uniform' averages the per-scale means.
Sampling: S sequential steps, all tokens of a scale drawn in one head call. KV cache over scales
(`use_cache=True`): step k feeds only scale k's inputs (plus the condition tokens at k = 0);
`use_cache=False` recomputes the full prefix every step (reference path). Guidance: doubled batch
[cond; null] sharing the sampled scales, guidance inside `head.sample`, guidance_scale == 1 runs
no unconditional branch. With the 'linear' schedule the weight ramps over scales as FlowAR does,
progress k / (S - 1) (the first scale unguided) with `cfg_progress='scale'`; `cfg_progress='tokens'`
uses the share of pyramid tokens known after the step instead. FlowAR's guidance interval on the
flow time (guidance only for t <= 0.9) is a head feature and is not used: the head is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nestar.config import check_min
from nestar.heads import FlowHeadConfig, FlowMLPHead
from nestar.layers import ClassEmbedding, Transformer
from nestar.models.base import GenerativeModel, GuidedBatch, SampleOutput, TokenModelConfig
from nestar.models.spec import ModelSpec, register_model

UPSAMPLE_MODES = ("flowar", "bicubic", "bilinear", "nearest")


@dataclass
class NextScaleConfig(TokenModelConfig):
    """Next-scale (FlowAR-style): one block-causal transformer of `depth` blocks (and TokenModelConfig's).

    `z_dim` is the head condition width. `upsample`: how scale k-1 becomes scale k's input
    ('flowar' = bicubic to the full grid, then area down; or a direct F.interpolate mode).
    `cfg_progress`: 'scale' (FlowAR) or 'tokens'.
    """

    depth: int = 24
    num_cond_tokens: int = 1
    z_dim: int = 256
    upsample: str = "flowar"
    scale_loss_weighting: str = "tokens"
    cfg_progress: str = "scale"
    head: FlowHeadConfig = field(default_factory=FlowHeadConfig)

    def __post_init__(self) -> None:
        g = self.grid_size
        if g < 1 or g & (g - 1):
            raise ValueError(
                f"model.grid_size must be a power of two for scales 1, 2, 4, ..., got {g}"
            )
        super().__post_init__()
        check_min(
            "model.", 1, depth=self.depth, z_dim=self.z_dim, num_cond_tokens=self.num_cond_tokens
        )
        for name, allowed in (
            ("upsample", UPSAMPLE_MODES),
            ("scale_loss_weighting", ("tokens", "uniform")),
            ("cfg_progress", ("scale", "tokens")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )


def _to_grid(x_BnC: torch.Tensor, side: int) -> torch.Tensor:
    """(B, side^2, C) raster tokens -> (B, C, side, side)."""
    B, _, C = x_BnC.shape
    return x_BnC.transpose(1, 2).reshape(B, C, side, side)


def _from_grid(g_BCss: torch.Tensor) -> torch.Tensor:
    """(B, C, s, s) -> (B, s^2, C) in raster order."""
    return g_BCss.flatten(2).transpose(1, 2)


class NextScaleAR(GenerativeModel):
    """Coarse-to-fine next-scale AR over area-downsampled token grids with a rectified-flow MLP head."""

    def __init__(self, config: NextScaleConfig):
        super().__init__()
        cfg = config
        self.config, self.num_classes = cfg, cfg.num_classes
        G, w = cfg.grid_size, cfg.dim
        self.sides = [2**k for k in range(G.bit_length())]  # 1, 2, ..., G
        self.counts = [s * s for s in self.sides]
        self.offsets = [sum(self.counts[:k]) for k in range(len(self.sides))]
        self.num_scales, self.num_slots = len(self.sides), sum(self.counts)
        self.class_emb = ClassEmbedding(cfg.num_classes, w)
        self.cond_pos = nn.Parameter(torch.zeros(cfg.num_cond_tokens, w))
        self.start = nn.Parameter(torch.zeros(w))
        self.token_in = nn.Linear(cfg.token_dim, w)
        self.pos = nn.Parameter(torch.zeros(self.num_slots, w))
        self.level_emb = nn.Parameter(torch.zeros(self.num_scales, w))
        for p in (self.cond_pos, self.start, self.pos, self.level_emb, self.class_emb.weight):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.trunc_normal_(self.token_in.weight, std=0.02)
        nn.init.zeros_(self.token_in.bias)
        self.transformer = Transformer(w, cfg.depth, max(1, w // cfg.head_dim), cfg.mlp_ratio)
        self.z_out = nn.Linear(w, cfg.z_dim)
        self.z_level = nn.Parameter(torch.zeros(self.num_scales, cfg.z_dim))
        nn.init.trunc_normal_(self.z_level, std=0.02)
        self.head = FlowMLPHead(cfg.token_dim, cfg.z_dim, cfg.head)
        level = torch.cat(
            [torch.full((n,), k, dtype=torch.long) for k, n in enumerate(self.counts)]
        )
        self.register_buffer("level", level, persistent=False)  # scale index of every pyramid slot
        group = torch.cat([torch.zeros(cfg.num_cond_tokens, dtype=torch.long), level + 1])
        self.register_buffer(
            "mask", group[None, :] <= group[:, None], persistent=False
        )  # True = may attend

    def sequential_steps(self) -> int:
        return self.num_scales

    def transformers(self) -> list[Transformer]:
        return [self.transformer]

    # ----- pyramids ---------------------------------------------------------------------------
    def pyramid(self, tokens_BNC: torch.Tensor) -> list[torch.Tensor]:
        """Area-downsampled targets of every scale, each (B, side^2, C) in raster order."""
        grid = _to_grid(tokens_BNC, self.config.grid_size)
        return [
            _from_grid(F.interpolate(grid, size=(s, s), mode="area"))
            if s < self.config.grid_size
            else tokens_BNC
            for s in self.sides
        ]

    def upsample(self, x_BnC: torch.Tensor, k: int) -> torch.Tensor:
        """Scale k-1's tokens resized to scale k (the input of scale k), (B, side_k^2, C)."""
        g = _to_grid(x_BnC, self.sides[k - 1])
        s, G, mode = self.sides[k], self.config.grid_size, self.config.upsample
        if mode == "flowar":
            g = F.interpolate(
                F.interpolate(g, size=(G, G), mode="bicubic", align_corners=False),
                size=(s, s),
                mode="area",
            )
        elif mode == "nearest":
            g = F.interpolate(g, size=(s, s), mode="nearest")
        else:
            g = F.interpolate(g, size=(s, s), mode=mode, align_corners=False)
        return _from_grid(g)

    # ----- network ----------------------------------------------------------------------------
    def _embed_scale(self, k: int, prev_BnC: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """Input embeddings of scale k; `prev_BnC` = scale k-1's tokens (None for k = 0)."""
        o, n = self.offsets[k], self.counts[k]
        if k == 0:
            h = self.start.expand(batch, 1, -1)
        else:
            h = self.token_in(self.upsample(prev_BnC, k).to(self.start.dtype))
        return h + self.pos[o : o + n] + self.level_emb[k]

    def _embed_cond(self, labels_B: torch.Tensor) -> torch.Tensor:
        return self.class_emb.tokens(labels_B, self.cond_pos)

    def _z(self, out_BnD: torch.Tensor, k: int) -> torch.Tensor:
        return self.z_out(out_BnD) + self.z_level[k]

    def scale_conditions(self, pyramid: list[torch.Tensor], labels_B: torch.Tensor) -> torch.Tensor:
        """Teacher-forced conditions z (B, T, z_dim) of every pyramid slot; scale k's depend on scales < k only."""
        B, c = labels_B.shape[0], self.config.num_cond_tokens
        parts = [self._embed_cond(labels_B)]
        parts += [
            self._embed_scale(k, pyramid[k - 1] if k else None, B) for k in range(self.num_scales)
        ]
        out = self.transformer(torch.cat(parts, dim=1), self.mask)[:, c:]
        return self.z_out(out) + self.z_level[self.level]

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens_BNC, labels_B = batch["tokens"], batch["labels"]
        labels_B = self.drop_labels(labels_B, self.config.label_dropout)
        pyr = self.pyramid(tokens_BNC)
        z = self.scale_conditions(pyr, labels_B)
        out, total = {}, 0.0
        for k, (o, n) in enumerate(zip(self.offsets, self.counts)):
            loss_k = self.head.loss(pyr[k], z[:, o : o + n])
            out[f"loss_s{k}"] = loss_k.detach()
            wk = (
                n / self.num_slots
                if self.config.scale_loss_weighting == "tokens"
                else 1.0 / self.num_scales
            )
            total = total + wk * loss_k
        out["loss"] = total
        return out

    # ----- sampling ---------------------------------------------------------------------------
    def _progress(self, k: int) -> float:
        if self.config.cfg_progress == "tokens":
            return (self.offsets[k] + self.counts[k]) / self.num_slots
        return k / (self.num_scales - 1) if self.num_scales > 1 else 1.0

    def _sample(self, run: GuidedBatch, *, use_cache: bool = True) -> SampleOutput:
        """One scale per step; `use_cache=False` recomputes the prefix every step.

        Intermediates: each scale's grid, nearest-upsampled to the full grid (the last is the sample).
        """
        G, c, B2 = self.config.grid_size, self.config.num_cond_tokens, run.batch_labels.shape[0]
        caches = (
            self.transformer.new_caches(B2, c + self.num_slots, run.dtype, run.device)
            if use_cache
            else None
        )
        cond = self._embed_cond(run.batch_labels)
        scales: list[
            torch.Tensor
        ] = []  # generated scales, (B2, side^2, C), shared by both branches
        inputs: list[torch.Tensor] = []  # input embeddings of every scale so far (no-cache path)
        intermediates = []
        for k in range(self.num_scales):
            n = self.counts[k]
            h_k = self._embed_scale(k, scales[k - 1] if k else None, B2)
            if use_cache:
                h = torch.cat([cond, h_k], dim=1) if k == 0 else h_k
                start = 0 if k == 0 else c + self.offsets[k]
                end = start + h.shape[1]
                # scale k > 0 may see every cached key and itself: no mask (SDPA picks its fastest kernel)
                out = self.transformer(
                    h, self.mask[start:end, :end] if k == 0 else None, caches, start
                )
            else:
                inputs.append(h_k)
                h = torch.cat([cond, *inputs], dim=1)
                L = h.shape[1]
                out = self.transformer(h, self.mask[:L, :L])
            x_new = run.draw(self.head, self._z(out[:, -n:], k), self._progress(k))  # (B, n, C)
            scales.append(run.double(x_new))
            preview = F.interpolate(_to_grid(x_new, self.sides[k]), size=(G, G), mode="nearest")
            intermediates.append(_from_grid(preview))
        return SampleOutput(
            tokens=scales[-1][: run.batch].clone(),
            intermediates=intermediates,
            sequential_steps=self.num_scales,
        )


register_model(
    ModelSpec(
        "nextscale",
        NextScaleConfig,
        NextScaleAR,
        "next-scale (FlowAR-style): one scale per step",
        presets={"tiny": "nextscale-tiny", "s": "nextscale-s", "fmnist": "nextscale-fmnist"},
    )
)
