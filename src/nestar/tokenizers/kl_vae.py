"""KL autoencoder (LDM-style convolutional VAE with a diagonal-Gaussian posterior).

One implementation serves two uses:
- the public KL-16 VAE of MAR / FlowAR / ARINAR (`kl16_config()`: 256x256x3 -> 16x16x16, ch=128,
  ch_mult=(1, 1, 2, 2, 4), 2 res blocks per level, self-attention in the encoder's lowest-resolution
  level and in both middle blocks, none in the decoder's up path), loaded from a local checkpoint
  by `nestar.tokenizers.kl16`;
- small VAEs the project trains itself for 32x32 images (`small_vae_config()`), see `train_vae`.

Module and parameter names follow the LDM/MAR layout (`encoder.down.{level}.block.{i}.conv1.weight`,
`encoder.mid.attn_1.q.weight`, `quant_conv.weight`, `decoder.up.{level}.upsample.conv.weight`, ...),
so the public checkpoint's state dict maps onto this module key for key.

`KLTokenizer` wraps an autoencoder behind the `Tokenizer` interface: tokens are the posterior mean
(or a sample), mapped as (z - shift) * scale and laid out (B, h*w, C) in raster order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nestar.tokenizers.base import Tokenizer

LOGVAR_MIN, LOGVAR_MAX = (
    -30.0,
    20.0,
)  # the posterior's log-variance is clamped to this range (as in LDM)


@dataclass
class KLAutoencoderConfig:
    """Architecture of a KL autoencoder. The latent is `z_channels` x (S / 2**(len(ch_mult)-1))^2.

    `resolution` is the nominal input size used only to place attention (a level whose feature map
    would be in `enc_attn_resolutions` / `dec_attn_resolutions` at that input size gets attention
    after each res block), so the module layout, and hence the state-dict keys, never depend on the
    size of the images actually fed in.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 256
    enc_attn_resolutions: tuple[int, ...] = (16,)
    dec_attn_resolutions: tuple[int, ...] = ()
    norm_groups: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.enc_attn_resolutions = tuple(int(r) for r in self.enc_attn_resolutions)
        self.dec_attn_resolutions = tuple(int(r) for r in self.dec_attn_resolutions)
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(
                f"ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}"
            )
        for m in self.ch_mult:
            if (self.ch * m) % self.norm_groups:
                raise ValueError(
                    f"channel width {self.ch * m} (ch={self.ch} x {m}) is not divisible by "
                    f"norm_groups={self.norm_groups}"
                )
        if self.num_res_blocks < 1 or self.z_channels < 1:
            raise ValueError("num_res_blocks and z_channels must be >= 1")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "KLAutoencoderConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown KL autoencoder config field(s) {unknown}")
        return cls(**known)


def kl16_config() -> KLAutoencoderConfig:
    """The KL-16 VAE of MAR (LTH14/mar models/vae.py, `AutoencoderKL(embed_dim=16, ch_mult=(1,1,2,2,4))`)."""
    return KLAutoencoderConfig()


def small_vae_config(
    channels: int = 1,
    image_size: int = 32,
    z_channels: int = 4,
    ch: int = 32,
    ch_mult: tuple[int, ...] = (1, 2, 2),
    num_res_blocks: int = 1,
) -> KLAutoencoderConfig:
    """A small KL-VAE for 32x32 data: (1, 2, 2) gives 8x8 latents; attention only in the middle blocks."""
    return KLAutoencoderConfig(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        z_channels=z_channels,
        in_channels=channels,
        out_channels=channels,
        resolution=image_size,
        enc_attn_resolutions=(),
        dec_attn_resolutions=(),
        norm_groups=min(32, ch),
    )


# ----- building blocks (names match the LDM/MAR state dict) ----------------------------------
def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> dropout -> conv2, plus a 1x1 `nin_shortcut`
    when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q/k/v/proj_out and a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        n = self.norm(x)
        q, k, v = (
            m(n).flatten(2).transpose(1, 2).unsqueeze(1) for m in (self.q, self.k, self.v)
        )  # B,1,HW,C
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with zero padding on the right and bottom only (LDM's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block` (res blocks), `attn` (empty or one per block), and optionally
    `downsample` / `upsample`."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups, dropout)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """images (B, in_channels, S, S) -> moments before quant_conv (B, 2*z_channels, S/f, S/f)."""

    def __init__(self, cfg: KLAutoencoderConfig):
        super().__init__()
        g, n_lv = cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        width, res = cfg.ch, cfg.resolution
        for lv, mult in enumerate(cfg.ch_mult):
            out_w = cfg.ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(width, out_w, g, cfg.dropout))
                width = out_w
                if res in cfg.enc_attn_resolutions:
                    attns.append(AttnBlock(width, g))
            level = _Level(blocks, attns)
            if lv != n_lv - 1:
                level.downsample = Downsample(width)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(width, g, cfg.dropout)
        self.norm_out = _norm(width, g)
        self.conv_out = nn.Conv2d(width, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """latents (B, z_channels, s, s) -> images (B, out_channels, s*f, s*f).

    `up[i]` is the level at resolution index i (as in the encoder); it is run from the lowest
    resolution upwards and has num_res_blocks + 1 res blocks.
    """

    def __init__(self, cfg: KLAutoencoderConfig):
        super().__init__()
        g, n_lv = cfg.norm_groups, len(cfg.ch_mult)
        width = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.downsample_factor
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = _Mid(width, g, cfg.dropout)
        levels: list[_Level] = []
        for lv in reversed(range(n_lv)):
            out_w = cfg.ch * cfg.ch_mult[lv]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(width, out_w, g, cfg.dropout))
                width = out_w
                if res in cfg.dec_attn_resolutions:
                    attns.append(AttnBlock(width, g))
            level = _Level(blocks, attns)
            if lv != 0:
                level.upsample = Upsample(width)
                res *= 2
            levels.append(level)
        self.up = nn.ModuleList(levels[::-1])  # index = resolution level
        self.norm_out = _norm(width, g)
        self.conv_out = nn.Conv2d(width, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----- posterior helpers ---------------------------------------------------------------------
def sample_posterior(
    mean: torch.Tensor, logvar: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """A reparameterised sample mean + std * eps of the diagonal Gaussian (logvar clamped)."""
    std = torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * eps


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, I)) summed over all but the batch dimension: shape (B,)."""
    logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class KLAutoencoder(nn.Module):
    """encoder -> quant_conv (moments: mean, logvar) ... post_quant_conv -> decoder."""

    def __init__(self, cfg: KLAutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of the posterior, each (B, z_channels, s, s); logvar is not clamped."""
        f = self.cfg.downsample_factor
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"expected images (B, {self.cfg.in_channels}, H, W) with H, W divisible by {f}, "
                f"got {tuple(x.shape)}"
            )
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mean, logvar); the decoder sees a posterior sample (or the mean)."""
        mean, logvar = self.encode_moments(x)
        z = sample_posterior(mean, logvar, generator) if sample else mean
        return self.decode(z), mean, logvar


def state_dict_sha256(module: nn.Module) -> str:
    """A hash of the weights (sorted keys, dtypes, shapes, bytes): the tokenizer's identity."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class KLTokenizer(Tokenizer):
    """A frozen KL autoencoder behind the Tokenizer interface.

    tokens = (z - shift) * scale in (B, h*w, z_channels) raster order, where z is the posterior
    mean, or a reparameterised sample when `sample_posterior` (MAR trains on samples).
    """

    def __init__(
        self,
        vae: KLAutoencoder,
        image_size: int,
        scale: float = 1.0,
        shift: float = 0.0,
        sample_posterior: bool = False,
        name: str = "kl",
    ):
        super().__init__()
        f = vae.cfg.downsample_factor
        if image_size % f:
            raise ValueError(
                f"image_size {image_size} is not divisible by the VAE's downsampling factor {f}"
            )
        self.vae = vae.eval().requires_grad_(False)
        self.image_size, self.channels = image_size, vae.cfg.in_channels
        self.grid_size, self.token_dim = image_size // f, vae.cfg.z_channels
        self.scale, self.shift = float(scale), float(shift)
        self.sample_posterior = sample_posterior
        self.name = name
        self._hash: Optional[str] = None

    def train(self, mode: bool = True) -> "KLTokenizer":  # the VAE stays in eval mode
        super().train(mode)
        self.vae.eval()
        return self

    def identity(self) -> dict:
        """Architecture + weights hash: what a latent cache is keyed on (the same weights loaded
        from a .ckpt, a .safetensors file or a trained directory have the same identity)."""
        if self._hash is None:
            self._hash = state_dict_sha256(self.vae)
        return {"arch": self.vae.cfg.to_dict(), "weights_sha256": self._hash}

    def _check(self, images: torch.Tensor) -> None:
        want = (self.channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f"expected images of shape (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(images.shape)}"
            )

    @torch.no_grad()
    def encode_moments(self, images_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar), each (B, C, h, w) float32, unscaled."""
        self._check(images_BCHW)
        p = next(self.vae.parameters())
        mean, logvar = self.vae.encode_moments(images_BCHW.to(device=p.device, dtype=p.dtype))
        return mean.float(), logvar.float()

    def latents_to_tokens(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        return ((z_BCHW - self.shift) * self.scale).flatten(2).transpose(1, 2).contiguous()

    def tokens_to_latents(self, tokens_BLC: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens_BLC.shape
        if n != self.grid_size**2 or c != self.token_dim:
            raise ValueError(
                f"expected tokens (B, {self.grid_size**2}, {self.token_dim}), got {tuple(tokens_BLC.shape)}"
            )
        z = tokens_BLC / self.scale + self.shift
        return z.transpose(1, 2).reshape(b, c, self.grid_size, self.grid_size)

    @torch.no_grad()
    def encode(
        self, images_BCHW: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        mean, logvar = self.encode_moments(images_BCHW)
        z = sample_posterior(mean, logvar, generator) if self.sample_posterior else mean
        return self.latents_to_tokens(z)

    @torch.no_grad()
    def decode(self, tokens_BLC: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        z = self.tokens_to_latents(tokens_BLC.to(device=p.device, dtype=p.dtype))
        return self.vae.decode(z).float()


# ----- a trained VAE on disk: config.json + model.safetensors --------------------------------
KL_DIR_FORMAT = "nestar-kl-vae/1"
KL_DIR_CONFIG, KL_DIR_WEIGHTS = "config.json", "model.safetensors"


def save_kl_dir(
    directory,
    vae: KLAutoencoder,
    *,
    image_size: int,
    latent_scale: float,
    latent_shift: float,
    extra: Optional[dict] = None,
) -> "Path":
    """Write weights (safetensors) then config.json, each atomically; config.json is written last,
    so a directory with a config always has complete weights."""
    from pathlib import Path

    from safetensors.torch import save_file

    from nestar.config import save_json
    from nestar.utils.io import atomic_write

    d = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in vae.state_dict().items()}
    atomic_write(
        d / KL_DIR_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": KL_DIR_FORMAT})
    )
    cfg = {
        "format": KL_DIR_FORMAT,
        "arch": vae.cfg.to_dict(),
        "image_size": int(image_size),
        "latent_scale": float(latent_scale),
        "latent_shift": float(latent_shift),
        "weights": KL_DIR_WEIGHTS,
        "weights_sha256": state_dict_sha256(vae),
        **(extra or {}),
    }
    save_json(cfg, d / KL_DIR_CONFIG)
    return d


def read_kl_dir_config(directory) -> dict:
    """config.json of a trained VAE directory (no weights are read)."""
    from pathlib import Path

    from nestar.tokenizers.vae_weights import TokenizerCheckpointError

    p = Path(directory) / KL_DIR_CONFIG
    if not p.is_file():
        raise TokenizerCheckpointError(
            f"{p} not found: tokenizer.path={directory!s} must be a directory written by "
            f"`nestar train-tokenizer --out DIR` (config.json + {KL_DIR_WEIGHTS})"
        )
    try:
        cfg = json.loads(p.read_text())
        cfg["arch"] = KLAutoencoderConfig.from_dict(cfg["arch"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise TokenizerCheckpointError(
            f"{p} is not a valid KL-VAE config ({type(e).__name__}: {e})"
        ) from e
    if cfg.get("format") != KL_DIR_FORMAT:
        raise TokenizerCheckpointError(
            f"{p}: format {cfg.get('format')!r} is not {KL_DIR_FORMAT!r}"
        )
    return cfg


def load_kl_dir(directory) -> tuple[KLAutoencoder, dict]:
    """(autoencoder with weights, config dict) of a directory written by `save_kl_dir`."""
    from pathlib import Path

    from nestar.tokenizers.vae_weights import load_weights, read_state_dict

    cfg = read_kl_dir_config(directory)
    vae = KLAutoencoder(cfg["arch"])
    path = Path(directory) / cfg.get("weights", KL_DIR_WEIGHTS)
    load_weights(vae, read_state_dict(path), str(path), strict=True)
    return vae.eval(), cfg
