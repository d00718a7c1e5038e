"""Rectified-flow MLP head with adaLN (MAR's SimpleMLPAdaLN design, flow matching instead of DDPM)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from nestar.config import ConfigError, check_min
from nestar.heads.base import Head


@dataclass
class FlowHeadConfig:
    """Flow head. `time_dist`: 'uniform' or 'logit_normal'. `sampler`: 'euler' or 'heun'.

    `time_grid`: where the `num_steps` sampling steps fall on t in [0, 1] (noise at 0, data at 1):
    'uniform'; 'data' (t = 1 - (1 - u)^2, denser near the data end); 'noise' (t = u^2, denser near
    the noise end). Sampler, grid and steps are sampling-only settings: they may change on a
    trained model.

    `kind`: 'mlp' (per-token MLP, MAR's design) or 'joint' (a small adaLN transformer across the
    tokens of one patch, FlowAR-style; NestAR only; `heads` attention heads, `depth` blocks).
    Temperature convention: the initial noise x0 ~ N(0, T^2 I) (MAR scales noise the same way).
    """

    width: int = 256
    depth: int = 3
    batch_mul: int = 4  # t/noise draws per z per training step (MAR's diffusion_batch_mul)
    time_dist: str = "uniform"
    sampler: str = "euler"
    num_steps: int = 25
    kind: str = "mlp"
    heads: int = 4
    time_grid: str = "uniform"

    def __post_init__(self) -> None:
        check_min(
            "model.head.",
            1,
            width=self.width,
            depth=self.depth,
            batch_mul=self.batch_mul,
            num_steps=self.num_steps,
            heads=self.heads,
        )
        if self.kind not in ("mlp", "joint"):
            raise ValueError(f"head.kind must be 'mlp' or 'joint', got {self.kind!r}")
        if self.kind == "joint" and self.width % self.heads:
            raise ValueError(f"head.width {self.width} is not divisible by head.heads {self.heads}")
        if self.time_dist not in ("uniform", "logit_normal"):
            raise ValueError(
                f"head.time_dist must be 'uniform' or 'logit_normal', got {self.time_dist!r}"
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(f"head.sampler must be 'euler' or 'heun', got {self.sampler!r}")
        if self.time_grid not in TIME_GRIDS:
            raise ValueError(
                f"head.time_grid must be one of {', '.join(TIME_GRIDS)}, got {self.time_grid!r}"
            )


SAMPLERS = ("euler", "heun")
TIME_GRIDS = ("uniform", "data", "noise")


@contextlib.contextmanager
def flow_solver(
    model: nn.Module, sampler: Optional[str] = None, time_grid: Optional[str] = None
) -> Iterator[None]:
    """Sample every flow head of `model` with another solver and/or time grid inside the block.

    Both are sampling-only settings (the weights do not depend on them). None keeps the head's own.
    A model without a flow head (ARINAR's GMM head) refuses them instead of ignoring them.
    """
    changes = {k: v for k, v in dict(sampler=sampler, time_grid=time_grid).items() if v is not None}
    heads = [m for m in model.modules() if isinstance(m, FlowMLPHead)]
    if changes and not heads:
        raise ConfigError(
            f"sample.head_sampler / sample.time_grid apply to flow heads; "
            f"{type(model).__name__} has none"
        )
    saved = [h.config for h in heads]
    try:
        for h in heads:
            h.config = dataclasses.replace(h.config, **changes)
        yield
    finally:
        for h, c in zip(heads, saved):
            h.config = c


def time_grid(kind: str, num_steps: int, device: torch.device) -> torch.Tensor:
    """The `num_steps + 1` times t_0 = 0 < ... < t_n = 1 of the sampling steps (see `time_grid`)."""
    u = torch.linspace(0.0, 1.0, num_steps + 1, device=device)
    if kind == "data":
        return 1.0 - (1.0 - u) ** 2
    if kind == "noise":
        return u**2
    return u


def timestep_embedding(t_N: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 as in DiT/MAR)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t_N.device, dtype=torch.float32) / half
    )
    args = (t_N.float() * 1000)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class FlowMLPHead(Head):
    """v_theta(x_t, t, z): MLP of adaLN residual blocks; path x_t = t*x1 + (1-t)*x0, target x1 - x0.

    Per token: `group_size` is accepted for the interface and ignored. Subclasses with `joint = True`
    treat each run of `group_size` consecutive tokens as one sample (one t per group).
    """

    joint = False

    def __init__(self, token_dim: int, cond_dim: int, config: FlowHeadConfig):
        super().__init__()
        if config.kind != "mlp" and type(self) is FlowMLPHead:
            raise ValueError(
                f"head.kind={config.kind!r} is not supported by this model "
                f"(only NestAR has a joint patch head)"
            )
        self.token_dim, self.cond_dim, self.config = token_dim, cond_dim, config
        w = config.width
        self.input_proj = nn.Linear(token_dim, w)
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.cond_embed = nn.Linear(cond_dim, w)
        self.blocks = nn.ModuleList(ResBlock(w) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.out = nn.Linear(w, token_dim)
        for m in (self.final_ada[1], self.out):  # zero-init: the head starts at v = 0
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def velocity(
        self, x_NC: torch.Tensor, t_N: torch.Tensor, z_NZ: torch.Tensor, group_size: int = 1
    ) -> torch.Tensor:
        """v(x_t, t, z) for rows of x, t and z (training; sampling hoists the parts of c)."""
        c_NW = self.embed_time(t_N, x_NC.dtype) + self.cond_embed(z_NZ)
        return self.velocity_from(x_NC, c_NW, group_size)

    def embed_time(self, t_N: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.time_embed(timestep_embedding(t_N, self.config.width).to(dtype))

    def velocity_from(
        self, x_NC: torch.Tensor, c_NW: torch.Tensor, group_size: int = 1
    ) -> torch.Tensor:
        """The network given the adaLN condition c = time embedding + condition embedding."""
        h = self.input_proj(x_NC)
        for blk in self.blocks:
            h = blk(h, c_NW)
        shift, scale = self.final_ada(c_NW).chunk(2, dim=-1)
        return self.out(self.final_norm(h) * (1 + scale) + shift)

    def _draw_t(self, n: int, device: torch.device) -> torch.Tensor:
        if self.config.time_dist == "logit_normal":
            return torch.sigmoid(torch.randn(n, device=device))
        return torch.rand(n, device=device)

    def loss(
        self, target_NC: torch.Tensor, z_NZ: torch.Tensor, group_size: int = 1
    ) -> torch.Tensor:
        x1 = target_NC.reshape(-1, self.token_dim).float()
        z = z_NZ.reshape(-1, self.cond_dim)
        if self.config.batch_mul > 1:  # whole copies of the batch: groups stay contiguous
            x1 = x1.repeat(self.config.batch_mul, 1)
            z = z.repeat(self.config.batch_mul, 1)
        g = group_size if self.joint else 1
        if x1.shape[0] % g:
            raise ValueError(f"{x1.shape[0]} tokens do not split into groups of {g}")
        t = self._draw_t(x1.shape[0] // g, x1.device).repeat_interleave(g)
        x0 = torch.randn_like(x1)
        xt = t[:, None] * x1 + (1 - t[:, None]) * x0
        v = self.velocity(xt.to(z.dtype), t, z, g)
        return (v.float() - (x1 - x0)).pow(2).mean()

    @torch.no_grad()
    def sample(
        self,
        z_NZ: torch.Tensor,
        *,
        z_uncond_NZ: Optional[torch.Tensor] = None,
        guidance_scale: float = 1.0,
        num_steps: Optional[int] = None,
        temperature: float = 1.0,
        generator: Optional[torch.Generator] = None,
        group_size: int = 1,
    ) -> torch.Tensor:
        """Euler or Heun steps on `time_grid`. What does not change inside the call is computed
        once: the condition embedding per call, the time embedding per grid point; with guidance
        the conditional and unconditional rows go through one batched forward (rows [z; z_u])."""
        num_steps = num_steps or self.config.num_steps
        n = z_NZ.shape[0]
        g = group_size if self.joint else 1
        gen_device = generator.device if generator is not None else z_NZ.device
        x = (
            torch.randn(n, self.token_dim, generator=generator, device=gen_device).to(z_NZ.device)
            * temperature
        )
        x = x.to(z_NZ.dtype)
        guided = z_uncond_NZ is not None
        cz = self.cond_embed(torch.cat([z_NZ, z_uncond_NZ]) if guided else z_NZ)
        ts = time_grid(self.config.time_grid, num_steps, z_NZ.device)
        ct = self.embed_time(ts, x.dtype)  # (num_steps + 1, W): one row per grid point

        def v_at(x_NC: torch.Tensor, i: int) -> torch.Tensor:
            c = ct[i] + cz
            if not guided:
                return self.velocity_from(x_NC, c, g)
            v_c, v_u = self.velocity_from(torch.cat([x_NC, x_NC]), c, g).chunk(2)
            # v_c + (w-1)(v_c - v_u) == v_u + w(v_c - v_u), and is exactly v_c at w = 1.
            return v_c + (guidance_scale - 1.0) * (v_c - v_u)

        for i in range(num_steps):
            dt = ts[i + 1] - ts[i]
            v = v_at(x, i)
            if self.config.sampler == "heun" and i < num_steps - 1:
                v2 = v_at(x + dt * v, i + 1)
                x = x + dt * 0.5 * (v + v2)
            else:
                x = x + dt * v
        return x.float()

    def nfe(self, num_steps: Optional[int] = None) -> int:
        s = num_steps or self.config.num_steps
        return 2 * s - 1 if self.config.sampler == "heun" else s
