"""ARINAR's inner autoregressive head: a token's C channels generated one by one, each a 1-D GMM.

Given the outer model's condition z for one token, a small causal transformer runs over the token's
channels in their fixed order 0..C-1 (for pixel patches: the tokenizer's (C, p, p) order):
- position 0's input is `cond_proj(z) + start`; position f > 0's input is `in_proj(x_{f-1})`
  (a Linear(1 -> width) of the previous channel's value, teacher-forced at training);
- each position adds a learned position embedding; every block is adaLN-modulated by z
  (gates, scales and shifts for attention and MLP; gates start at zero so blocks start as identity);
- an adaLN layer on z precedes `Linear(width -> 3K)`: K means, K log-variances, K mixture logits.

Loss (per token, averaged over tokens):
    NLL = -sum_f logsumexp_k [ log pi_k - 1/2 ((x_f - mu_k)^2 / sigma_k^2 + log sigma_k^2) ]
The constant (C/2) log(2 pi) per token is dropped (as ARINAR does), so the value is the true NLL
minus C/2 * log(2 pi) ~= 0.919 * C nats; it can be negative.

Sampling feeds each drawn channel back in, with a preallocated KV cache (one query per step).
- No guidance (cfg == 1 or no unconditional z): pick a component k ~ pi, then x = mu_k + eps * s_k.
- Guidance: per channel, draw `num_candidates` values from the (tempered) conditional GMM, weight
  each by softmax((cfg - 1) * (log p_c(x) - log p_u(x))) (untempered densities), and resample one.
  This is importance resampling towards p_c^cfg * p_u^(1 - cfg); mixing the two GMMs' parameters
  would not be equivalent. The chosen value is fed to both branches.

Temperature convention (`temperature_mode`):
- 'div' (default): s_k = sigma_k / T, as in ARINAR's paper-time code (its tuned settings, e.g.
  "cfg 3.9 at T 1.1", assume this); T > 1 sharpens, T < 1 widens.
- 'mul': s_k = sigma_k * T, as ARINAR's later code and this project's flow head (T > 1 widens).
The mixture weights are not tempered in either mode.

`min_logvar` (not in ARINAR, which does not clamp): a smooth lower bound on each log-variance,
min_logvar + softplus(raw - min_logvar). Pixel tokens hold many exactly equal values (e.g. the
black Fashion-MNIST background), on which an unbounded GMM likelihood diverges; None disables it.
The default -6 (sigma >= 0.05, about 6 pixel levels of 8-bit data in [-1, 1]) is set for stability
(the measurements: docs/results.md, "Measurements behind defaults").

All randomness at sampling (components, noise, candidate choice) is drawn from the passed
generator, on the generator's device, so the same seed gives the same token on CPU and GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nestar.config import check_min
from nestar.heads.base import Head
from nestar.layers import AdaLNBlock, KVCache, Modulation


@dataclass
class GMMHeadConfig:
    """Inner-AR GMM head (ARINAR). `num_steps` is ignored; it stays a field so that saved run configs
    (and the benchmark cache keyed on them) keep loading."""

    width: int = 256
    depth: int = 1
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_gaussians: int = 4
    num_candidates: int = 1000  # importance-resampling candidates per channel under guidance
    temperature_mode: str = "div"  # 'div': sigma / T (ARINAR paper-time code); 'mul': sigma * T
    min_logvar: Optional[float] = -6.0  # smooth floor on log sigma^2; None = unbounded (ARINAR)
    num_steps: int = 0  # unused (one inner step per channel); kept for saved configs

    def __post_init__(self) -> None:
        if self.temperature_mode not in ("div", "mul"):
            raise ValueError(
                f"head.temperature_mode must be 'div' or 'mul', got {self.temperature_mode!r}"
            )
        if self.num_gaussians < 1 or self.num_candidates < 1 or self.depth < 1:
            raise ValueError("head.num_gaussians, head.num_candidates and head.depth must be >= 1")
        check_min("model.head.", 1, width=self.width, num_heads=self.num_heads)
        if self.width % self.num_heads:
            raise ValueError(
                f"head.width {self.width} is not divisible by head.num_heads {self.num_heads}"
            )


def gmm_log_prob(
    x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """log p(x) under a 1-D GMM minus log(2 pi)/2; x (..., S) against params (..., K) -> (..., S)."""
    d = x[..., :, None] - mu[..., None, :]
    comp = -0.5 * (d * d * torch.exp(-logvar[..., None, :]) + logvar[..., None, :])
    return torch.logsumexp(F.log_softmax(logits, dim=-1)[..., None, :] + comp, dim=-1)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of `probs` (..., K) given uniforms u (...,) in [0, 1)."""
    cdf = probs.cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    idx = torch.searchsorted(cdf.contiguous(), u[..., None].contiguous(), right=True)
    return idx.clamp_(max=probs.shape[-1] - 1)[..., 0]


class GMMARHead(Head):
    """p(x | z) = prod_f GMM(x_f | transformer(z, x_<f)) over the C channels of one token."""

    def __init__(self, token_dim: int, cond_dim: int, config: GMMHeadConfig):
        super().__init__()
        self.token_dim, self.cond_dim, self.config = token_dim, cond_dim, config
        w, K = config.width, config.num_gaussians
        self.cond_proj = nn.Linear(cond_dim, w)
        self.in_proj = nn.Linear(1, w)
        self.start = nn.Parameter(torch.zeros(w))
        self.pos = nn.Parameter(torch.zeros(token_dim, w))
        self.blocks = nn.ModuleList(
            AdaLNBlock(w, config.num_heads, config.mlp_ratio, cond_dim, layout="var")
            for _ in range(config.depth)
        )
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * w))
        self.out = nn.Linear(w, 3 * K)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.start, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        depth, w = self.config.depth, self.config.width
        with torch.no_grad():
            for blk in self.blocks:
                blk.proj.weight.div_(math.sqrt(2 * depth))
                blk.mlp[2].weight.div_(math.sqrt(2 * depth))
                blk.ada[1].weight[
                    : 2 * w
                ].zero_()  # gates start at 0: each block starts as identity
                blk.ada[1].weight[2 * w :].mul_(0.5)
            self.final_ada[1].weight.mul_(0.5)
            self.out.weight.mul_(0.02)  # starts near N(0, 1) components with equal weights

    # ----- network ----------------------------------------------------------------------------
    @staticmethod
    def _modulation(blk: AdaLNBlock, z_NZ: torch.Tensor) -> Modulation:
        """One modulation per token (sequence of channels), broadcast over the channels: (N, 1, width)."""
        return Modulation(*(m[:, None] for m in blk.modulation(z_NZ)))

    def _split(self, out_NL3K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, mu, logvar), each (..., K), in float32."""
        logits, mu, logvar = out_NL3K.float().chunk(3, dim=-1)
        if self.config.min_logvar is not None:
            m = self.config.min_logvar
            logvar = m + F.softplus(logvar - m)
        return logits, mu, logvar

    def _output(self, h_NLD: torch.Tensor, z_NZ: torch.Tensor) -> torch.Tensor:
        # Outside autocast, in the weights' dtype (fp32 in training): bf16 spaces values near -1 by
        # 2^-7 ~ 0.008, as coarse as a sharp component's sigma, so a bf16 mean could not sit on the
        # exactly repeated background value.
        dt = self.out.weight.dtype
        with torch.autocast(device_type=h_NLD.device.type, enabled=False):
            h, z = h_NLD.to(dt), z_NZ.to(dt)
            shift, scale = self.final_ada(z)[:, None].chunk(2, dim=-1)
            return self.out(self.final_norm(h) * (1 + scale) + shift)

    def gmm_params(
        self, target_NC: torch.Tensor, z_NZ: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced GMM parameters (N, C, K) of every channel given the previous channels."""
        n, C = target_NC.shape
        start = self.cond_proj(z_NZ) + self.start
        prev = self.in_proj(target_NC[:, :-1, None].to(start.dtype))
        h = torch.cat([start[:, None], prev], dim=1) + self.pos[:C]
        for blk in self.blocks:
            h = blk(h, self._modulation(blk, z_NZ), causal=True)
        return self._split(self._output(h, z_NZ))

    def log_prob(self, target_NC: torch.Tensor, z_NZ: torch.Tensor) -> torch.Tensor:
        """Per-token log-likelihood (N,) without the C/2 log(2 pi) constant."""
        logits, mu, logvar = self.gmm_params(target_NC, z_NZ)
        return gmm_log_prob(target_NC.float()[..., None], logits, mu, logvar)[..., 0].sum(-1)

    def loss(
        self, target_NC: torch.Tensor, z_NZ: torch.Tensor, group_size: int = 1
    ) -> torch.Tensor:
        x = target_NC.reshape(-1, self.token_dim)  # per token: group_size is ignored
        z = z_NZ.reshape(-1, self.cond_dim)
        return -self.log_prob(x, z).mean()

    # ----- sampling ---------------------------------------------------------------------------
    def _std_scale(self, temperature: float) -> float:
        if self.config.temperature_mode == "div":
            if temperature <= 0:
                raise ValueError(
                    f"temperature must be > 0 with head.temperature_mode='div', got {temperature}"
                )
            return 1.0 / temperature
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return temperature

    @staticmethod
    def _draw(
        shape: tuple[int, ...],
        kind: str,
        generator: Optional[torch.Generator],
        device: torch.device,
    ) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        fn = torch.rand if kind == "rand" else torch.randn
        return fn(shape, generator=generator, device=gen_device).to(device)

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
        """One token (N, C) per condition; `num_steps` and `group_size` are ignored (per token, C inner steps)."""
        del num_steps, group_size
        guided = z_uncond_NZ is not None and guidance_scale != 1.0
        n, C, dev = z_NZ.shape[0], self.token_dim, z_NZ.device
        z = torch.cat([z_NZ, z_uncond_NZ]) if guided else z_NZ
        n2 = z.shape[0]
        s = self._std_scale(temperature)
        dtype = z.dtype
        caches = [KVCache(n2, blk.heads, C, blk.head_dim, dtype, dev) for blk in self.blocks]
        mods = [self._modulation(blk, z) for blk in self.blocks]
        x = torch.empty(n, C, device=dev, dtype=torch.float32)
        h = (self.cond_proj(z) + self.start)[:, None]
        for f in range(C):
            h = h + self.pos[f]
            for blk, cache, mod in zip(self.blocks, caches, mods):
                h = blk(h, mod, cache=cache, start=f)
            logits, mu, logvar = self._split(self._output(h, z)[:, 0])  # (n2, K) each
            if guided:
                x_f = self._resample(logits, mu, logvar, n, s, guidance_scale, generator)
            else:
                x_f = self._draw_from_gmm(logits, mu, logvar, s, 1, generator)[:, 0]
            x[:, f] = x_f
            x_in = torch.cat([x_f, x_f]) if guided else x_f
            h = self.in_proj(x_in[:, None, None].to(dtype))
        return x

    def _draw_from_gmm(
        self, logits, mu, logvar, std_scale: float, num: int, generator
    ) -> torch.Tensor:
        """`num` draws (n, num) from each row's GMM with component std scaled by `std_scale`."""
        n, dev = logits.shape[0], logits.device
        u = self._draw((n, num), "rand", generator, dev)
        eps = self._draw((n, num), "randn", generator, dev)
        k = _inverse_cdf(logits.softmax(-1)[:, None, :].expand(n, num, -1), u)  # (n, num)
        mu_k = mu.gather(1, k)
        sd_k = torch.exp(0.5 * logvar.gather(1, k)) * std_scale
        return mu_k + eps * sd_k

    def _resample(
        self, logits, mu, logvar, n: int, std_scale: float, guidance_scale: float, generator
    ) -> torch.Tensor:
        """Importance resampling of one value per row towards p_c^w p_u^(1-w), w = guidance_scale."""
        cand = self._draw_from_gmm(
            logits[:n], mu[:n], logvar[:n], std_scale, self.config.num_candidates, generator
        )
        lp_c = gmm_log_prob(cand, logits[:n], mu[:n], logvar[:n])
        lp_u = gmm_log_prob(cand, logits[n:], mu[n:], logvar[n:])
        w = torch.softmax((guidance_scale - 1.0) * (lp_c - lp_u), dim=-1)  # (n, num_candidates)
        u = self._draw((n,), "rand", generator, logits.device)
        pick = _inverse_cdf(w, u)
        return cand.gather(1, pick[:, None])[:, 0]

    def nfe(self, num_steps: Optional[int] = None) -> int:
        """One inner-transformer step per channel, whatever `num_steps` says."""
        return self.token_dim
