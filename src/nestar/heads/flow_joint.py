"""Joint patch flow head: a small adaLN transformer across the tokens of one patch (FlowAR-style).

The per-token MLP head (MAR) draws the S tokens of a NestAR patch independently given their z;
this head draws them as one sample: the velocity of every token attends to the noisy state of the
other tokens of its patch. One flow time t per patch (training and sampling), adaLN on
time + z per token, a learned position embedding for the index inside the patch, zero-initialised
modulation and output (the head starts at v = 0, as the MLP head). Everything else (path, loss,
Euler/Heun, time grid, guidance, temperature) is the MLP head's: only `velocity_from` differs.
"""

from __future__ import annotations

import torch
from torch import nn

from nestar.heads.flow_mlp import FlowHeadConfig, FlowMLPHead
from nestar.layers.adaln import AdaLNBlock


class JointFlowHead(FlowMLPHead):
    """v_theta(x_t, t, z) for groups of `group_size` consecutive tokens (up to `max_group`)."""

    joint = True

    def __init__(self, token_dim: int, cond_dim: int, config: FlowHeadConfig, max_group: int):
        nn.Module.__init__(self)  # own layers; FlowMLPHead's __init__ would build the MLP
        self.token_dim, self.cond_dim, self.config, self.max_group = (
            token_dim,
            cond_dim,
            config,
            max_group,
        )
        w = config.width
        self.input_proj = nn.Linear(token_dim, w)
        self.pos = nn.Parameter(torch.zeros(max_group, w))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.cond_embed = nn.Linear(cond_dim, w)
        self.blocks = nn.ModuleList(AdaLNBlock(w, config.heads) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.out = nn.Linear(w, token_dim)
        for m in (self.final_ada[1], self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def velocity_from(
        self, x_NC: torch.Tensor, c_NW: torch.Tensor, group_size: int = 1
    ) -> torch.Tensor:
        n, S = x_NC.shape[0], group_size
        if S > self.max_group or n % S:
            raise ValueError(
                f"{n} tokens in groups of {S} (this head takes groups of at most {self.max_group})"
            )
        c = c_NW.view(n // S, S, -1)
        h = self.input_proj(x_NC).view(n // S, S, -1) + self.pos[:S]
        for blk in self.blocks:
            h = blk(h, blk.modulation(c))
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.out(self.final_norm(h) * (1 + scale) + shift).reshape(n, self.token_dim)


def build_flow_head(
    token_dim: int, cond_dim: int, config: FlowHeadConfig, max_group: int = 1
) -> FlowMLPHead:
    """The flow head `config.kind` names; `max_group`: the largest run of tokens a joint head sees."""
    if config.kind == "joint":
        return JointFlowHead(token_dim, cond_dim, config, max_group)
    return FlowMLPHead(token_dim, cond_dim, config)
