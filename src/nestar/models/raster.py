"""Raster AR baseline (docs/design.md, "Baselines"): a causal transformer, one continuous token per step.

Sequence (length c + N - 1, c = `num_cond_tokens`):
    [cond_1 .. cond_c ; x_0 .. x_{N-2}]
- condition tokens hold the class embedding (null class = `num_classes`) plus a learned position;
- slot c + j holds token x_j, embedded by a Linear;
- the output at slot c - 1 + i is the condition z_i of token x_i (i = 0..N-1), so every token is
  predicted from the class and the tokens before it in raster order (row by row).
Position: the slot that predicts token i carries the learned embedding `pos[i]` of that TARGET
token (the last condition token carries pos[0]). In a fixed raster order the slot index and the
target index determine each other, so no separate "input position" embedding is needed.

Training teacher-forces all N tokens in one causal pass. Sampling takes N sequential steps with a
preallocated KV cache (`use_cache=True`): step 0 feeds the condition tokens, step i feeds only
x_{i-1}; `use_cache=False` recomputes the whole prefix every step (reference path). Guidance and
the head are exactly NestAR's: doubled batch [cond; null] sharing the sampled tokens, guidance
inside `head.sample`, guidance_scale == 1 runs no unconditional branch (models/base.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nestar.config import check_min
from nestar.heads import FlowHeadConfig, FlowMLPHead
from nestar.layers import ClassEmbedding, Transformer
from nestar.models.base import GenerativeModel, GuidedBatch, SampleOutput, TokenModelConfig
from nestar.models.spec import ModelSpec, register_model


@dataclass
class RasterARConfig(TokenModelConfig):
    """Raster AR: one causal transformer of `depth` blocks (and TokenModelConfig's fields).

    `z_dim` is the width of the head condition; `num_cond_tokens` class tokens lead the sequence;
    `num_previews`: snapshots in SampleOutput.intermediates.
    """

    depth: int = 24
    num_cond_tokens: int = 1
    z_dim: int = 256
    num_previews: int = 4
    head: FlowHeadConfig = field(default_factory=FlowHeadConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min(
            "model.", 1, depth=self.depth, z_dim=self.z_dim, num_cond_tokens=self.num_cond_tokens
        )


class RasterAR(GenerativeModel):
    """Token-by-token causal AR in raster order with a rectified-flow MLP head."""

    def __init__(self, config: RasterARConfig):
        super().__init__()
        cfg = config
        self.config, self.num_classes = cfg, cfg.num_classes
        n, w = cfg.grid_size**2, cfg.dim
        self.num_tokens = n
        self.class_emb = ClassEmbedding(cfg.num_classes, w)
        self.cond_pos = nn.Parameter(torch.zeros(cfg.num_cond_tokens, w))
        self.token_in = nn.Linear(cfg.token_dim, w)
        self.pos = nn.Parameter(torch.zeros(n, w))  # pos[i]: the slot that predicts token i
        for p in (self.cond_pos, self.pos, self.class_emb.weight):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.trunc_normal_(self.token_in.weight, std=0.02)
        nn.init.zeros_(self.token_in.bias)
        self.transformer = Transformer(w, cfg.depth, max(1, w // cfg.head_dim), cfg.mlp_ratio)
        self.z_out = nn.Linear(w, cfg.z_dim)
        self.head = FlowMLPHead(cfg.token_dim, cfg.z_dim, cfg.head)

    def sequential_steps(self) -> int:
        return self.num_tokens

    def transformers(self) -> list[Transformer]:
        return [self.transformer]

    # ----- network ----------------------------------------------------------------------------
    def _embed_cond(self, labels_B: torch.Tensor) -> torch.Tensor:
        h = self.class_emb.tokens(labels_B, self.cond_pos)
        last = torch.zeros_like(self.cond_pos)
        last[-1] = self.pos[0]  # the last condition slot predicts token 0
        return h + last[None]

    def _embed_tokens(self, x_BnC: torch.Tensor, first: int) -> torch.Tensor:
        """Embeddings of tokens x_first .. x_{first+n-1}; the slot of x_j predicts token j + 1."""
        n = x_BnC.shape[1]
        return self.token_in(x_BnC) + self.pos[first + 1 : first + 1 + n][None]

    @staticmethod
    def _causal(L: int, device: torch.device) -> torch.Tensor:
        return torch.ones(L, L, dtype=torch.bool, device=device).tril()

    def conditions(self, tokens_BNC: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        """Teacher-forced conditions z (B, N, z_dim); z[:, i] depends on the label and tokens < i only."""
        c = self.config.num_cond_tokens
        h = torch.cat(
            [self._embed_cond(labels_B), self._embed_tokens(tokens_BNC[:, :-1], 0)], dim=1
        )
        out = self.transformer(h, self._causal(h.shape[1], h.device))
        return self.z_out(out[:, c - 1 :])

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens_BNC, labels_B = batch["tokens"], batch["labels"]
        labels_B = self.drop_labels(labels_B, self.config.label_dropout)
        z = self.conditions(tokens_BNC, labels_B)
        return {"loss": self.head.loss(tokens_BNC, z)}

    # ----- sampling ---------------------------------------------------------------------------
    def _sample(self, run: GuidedBatch, *, use_cache: bool = True) -> SampleOutput:
        """One token per step in raster order; `use_cache=False` recomputes the prefix every step.

        Guidance weight at token i: progress (i + 1) / N. Intermediates: `num_previews` snapshots
        (known tokens, zeros elsewhere), the last being the sample.
        """
        B, N, C = run.batch, self.num_tokens, self.config.token_dim
        c = self.config.num_cond_tokens
        lab, dev = run.batch_labels, run.device
        x = torch.zeros(lab.shape[0], N, C, device=dev, dtype=run.dtype)
        L = c + N - 1
        mask = self._causal(L, dev)
        caches = self.transformer.new_caches(lab.shape[0], L, run.dtype, dev) if use_cache else None
        k = self.config.num_previews
        preview_at = {max(1, round(N * (j + 1) / k)) for j in range(k)} if k > 0 else set()
        intermediates = []
        for i in range(N):
            if use_cache:
                if i == 0:
                    h, start = self._embed_cond(lab), 0
                else:
                    h, start = self._embed_tokens(x[:, i - 1 : i], i - 1), c + i - 1
                end = start + h.shape[1]
                # one new query that may see every cached key: no mask (SDPA picks its fastest kernel)
                out = self.transformer(h, mask[start:end, :end] if i == 0 else None, caches, start)
            else:
                h = torch.cat([self._embed_cond(lab), self._embed_tokens(x[:, :i], 0)], dim=1)
                out = self.transformer(h, mask[: h.shape[1], : h.shape[1]])
            z = self.z_out(out[:, -1])  # (B2, z_dim): the condition of token i
            run.write(x, slice(i, i + 1), run.draw(self.head, z[:, None], (i + 1) / N))
            if i + 1 in preview_at:
                intermediates.append(x[:B].clone())
        return SampleOutput(tokens=x[:B].clone(), intermediates=intermediates, sequential_steps=N)


register_model(
    ModelSpec(
        "raster",
        RasterARConfig,
        RasterAR,
        "raster AR: one token per step, causal transformer, KV cache",
        presets={"tiny": "raster-tiny", "s": "raster-s", "fmnist": "raster-fmnist"},
    )
)
