"""Run configs and named presets (`nestar presets` lists them).

A RunConfig bundles data, tokenizer, model, training and sampling settings. The model section's
type depends on `model_type` (looked up in nestar.models.MODEL_SPECS), so every model in the project is built, saved
and loaded the same way. `grid_size`, `token_dim` and `num_classes` of the model are derived from
the data and tokenizer by `resolve()`; the resolved config is what gets saved in a run directory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from nestar.config import ConfigError, check_min, from_dict, to_dict
from nestar.data import DataConfig
from nestar.heads import FlowHeadConfig
from nestar.heads.flow_mlp import SAMPLERS, TIME_GRIDS
from nestar.heads.gmm_ar import GMMHeadConfig
from nestar.models import MODEL_SPECS, GenerativeModel
from nestar.models.arinar import ARINARConfig
from nestar.models.mar import MARConfig
from nestar.models.nestar import NestARConfig
from nestar.models.nextscale import NextScaleConfig
from nestar.models.raster import RasterARConfig
from nestar.tokenizers import TokenizerConfig, tokenizer_geometry
from nestar.utils.precision import check_precision

MAX_SEED = 2**32 - 1
CFG_SCHEDULES = ("constant", "linear")
PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_device_name(name: str, field_name: str) -> None:
    """A device string torch can parse ('auto', 'cpu', 'cuda', 'cuda:1', ...); availability is checked at use."""
    if name == "auto":
        return
    try:
        import torch

        torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"{field_name}: {name!r} is not a device (use auto, cpu, cuda, cuda:1, ...)"
        ) from e


@dataclass
class TrainConfig:
    """Optimiser and loop settings (MAR recipe defaults: AdamW(0.9, 0.95), wd 0.02, clip 3.0)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # 'constant' (MAR) or 'cosine' (decays to min_lr_ratio * lr)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 3.0
    ema_decay: float = 0.999  # with warm-up: min(decay, (1+step)/(10+step))
    # 'auto': bf16 autocast where the hardware runs bf16 natively (CUDA with bf16, CPUs with AVX-512
    # BF16/AMX), else fp32 (bf16 is emulated and ~10x slower on AVX2 CPUs). Params, optimiser and
    # loss stay fp32. The run's config.json records what was chosen ('fp32' or 'bf16').
    precision: str = "auto"
    seed: int = 0
    log_every: int = 50
    tensorboard: bool = (
        False  # also log the CSV rows to <run_dir>/tensorboard (extra: nestar[tensorboard])
    )
    sample_every: int = 1000  # 0 = never
    ckpt_every: int = 500
    num_workers: int = 0
    device: str = "auto"  # 'auto' = cuda if available else cpu (cuda:LOCAL_RANK under torchrun)
    # Scale-out (docs/scaling.md). batch_size is the GLOBAL batch: world_size x grad_accum x micro-batch.
    grad_accum: int = (
        1  # micro-batches per process per step (gradients accumulated, one optimizer step)
    )
    parallel: str = (
        "ddp"  # under torchrun: 'ddp' (replicated weights) or 'fsdp' (FSDP2 fully_shard per block)
    )
    activation_checkpointing: bool = (
        False  # recompute transformer / head block activations in backward
    )
    compile: bool = False  # torch.compile each transformer block
    allow_world_size_change: bool = (
        False  # resume a checkpoint written by another number of processes
    )

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"train.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"
            )
        check_min("train.", 1, steps=self.steps, batch_size=self.batch_size)
        check_min(
            "train.",
            0,
            warmup_steps=self.warmup_steps,
            log_every=self.log_every,
            sample_every=self.sample_every,
            ckpt_every=self.ckpt_every,
            num_workers=self.num_workers,
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
        )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must both lie in [0, 1), got {list(self.betas)}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(
                f"train.ema_decay must be in [0, 1) (e.g. 0.999), got {self.ema_decay}"
            )
        if (
            not 0 <= self.seed <= MAX_SEED
        ):  # the data order multiplies it by ~1e6 inside a 64-bit generator seed
            raise ConfigError(f"train.seed must be in [0, {MAX_SEED}], got {self.seed}")
        check_device_name(self.device, "train.device")
        check_precision(self.precision, "train.precision")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"train.parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.grad_accum must be >= 1 and divide train.batch_size={self.batch_size}, "
                f"got {self.grad_accum}"
            )


@dataclass
class SampleConfig:
    """Default sampling settings used for grids, the demo and evaluation."""

    cfg: float = 3.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0
    num_steps: int = 25  # flow-head ODE steps
    # Flow-head solver and time grid at sampling; None: the model's own (model.head.sampler /
    # model.head.time_grid). Sampling-only, so a trained model can be sampled with fewer steps.
    head_sampler: Optional[str] = None
    time_grid: Optional[str] = None
    seed: int = 0
    precision: str = (
        "auto"  # 'auto' | 'fp32' | 'bf16', as train.precision (bf16 autocast when sampling)
    )

    def __post_init__(self) -> None:
        check_precision(self.precision, "sample.precision")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ConfigError(
                f"sample.cfg_schedule must be one of {list(CFG_SCHEDULES)}, got {self.cfg_schedule!r}"
            )
        if not (math.isfinite(self.cfg) and self.cfg >= 0):
            raise ConfigError(
                f"sample.cfg (guidance scale) must be a finite number >= 0 (1 = no guidance), got {self.cfg}"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(
                f"sample.temperature must be a finite number > 0, got {self.temperature}"
            )
        check_min("sample.", 1, num_steps=self.num_steps)
        if self.head_sampler not in (None, *SAMPLERS):
            raise ConfigError(
                f"sample.head_sampler must be null or one of {list(SAMPLERS)}, got {self.head_sampler!r}"
            )
        if self.time_grid not in (None, *TIME_GRIDS):
            raise ConfigError(
                f"sample.time_grid must be null or one of {list(TIME_GRIDS)}, got {self.time_grid!r}"
            )
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"sample.seed must be in [0, {MAX_SEED}], got {self.seed}")


@dataclass
class RunConfig:
    model_type: str = "nestar"
    model: Any = field(default_factory=NestARConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    preset: str = ""
    # Settings changed on resume: [{"step": S, "changes": {"train.lr": [old, new]}}] (training/resume.py).
    history: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The preset names the default run directory (runs/<preset>): a plain name, never a path.
        if self.preset and not PRESET_NAME.fullmatch(self.preset):
            raise ConfigError(
                f"preset: {self.preset!r} is not a plain name (letters, digits, '.', '_', '-'; "
                f'no path separators); fix the config\'s "preset" field or give --run-dir'
            )

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError(
                f'a run config must be a JSON object ({{"model_type": ..., "model": {{...}}, ...}}), '
                f"got {type(data).__name__}"
            )
        data = upgrade_legacy(dict(data))
        model_type = data.get("model_type", "nestar")
        if not isinstance(model_type, str) or model_type not in MODEL_SPECS:
            raise ConfigError(f"model_type: unknown {model_type!r}; known: {sorted(MODEL_SPECS)}")
        model_cls = MODEL_SPECS[model_type].config_cls
        model = data.pop("model", {})
        cfg = from_dict(cls, data)
        if isinstance(model, model_cls):
            model = to_dict(model)
        if not isinstance(model, dict):
            raise ConfigError(
                f"model: expected a mapping of {model_cls.__name__} fields, got {model!r:.80}"
            )
        # Derived fields come from data + tokenizer before the model config validates itself,
        # so `--tokenizer.patch_size=2 --model.k=2` is checked as a whole.
        # Geometry only: parsing a config never builds a tokenizer or reads VAE weights.
        try:
            grid_size, token_dim = tokenizer_geometry(
                cfg.tokenizer, cfg.data.image_size, cfg.data.channels
            )
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"tokenizer: {e}") from e
        model = {
            **model,
            "grid_size": grid_size,
            "token_dim": token_dim,
            "num_classes": cfg.data.num_classes,
        }
        cfg.model = from_dict(model_cls, model, prefix="model.")
        return cfg


# NestAR fields added after the first checkpoints, with the value those checkpoints were trained
# with; a config without them reads as trained then, whatever today's default is.
NESTAR_LEGACY_DEFAULTS = {"neighbour_context": False, "loss_weighting": "module", "order_offset": 0}


def upgrade_legacy(data: dict) -> dict:
    """Read older configs: `train.bf16` true/false -> `train.precision` 'bf16'/'fp32'; a NestAR model
    section without `neighbour_context`, `loss_weighting` or `order_offset` was trained with the
    defaults of its time (no neighbour context; per-module loss means; lattice offset 0)."""
    model = data.get("model")
    if data.get("model_type", "nestar") == "nestar" and isinstance(model, dict):
        legacy = {k: v for k, v in NESTAR_LEGACY_DEFAULTS.items() if k not in model}
        data["model"] = {**legacy, **model}
    train = data.get("train")
    if isinstance(train, dict) and "bf16" in train:
        train = dict(train)
        bf16 = train.pop("bf16")
        train.setdefault("precision", "bf16" if bf16 else "fp32")
        data["train"] = train
    return data


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill the model's data-derived fields from the data and tokenizer configs (validating them)."""
    return RunConfig.from_dict(to_dict(cfg))


def build_model(cfg: RunConfig) -> GenerativeModel:
    """The model a resolved run config describes (fresh weights)."""
    return MODEL_SPECS[cfg.model_type].build(cfg.model)


def config_to_dict(cfg: RunConfig) -> dict:
    return to_dict(cfg)


# ----- presets -------------------------------------------------------------------------------
PRESETS: dict[str, Callable[[], RunConfig]] = {}
# Tiny presets (tests, smoke runs): seconds per hundred steps on a CPU.
_TINY_TRAIN = dict(
    steps=20,
    batch_size=8,
    warmup_steps=2,
    log_every=5,
    sample_every=0,
    ckpt_every=10,
    precision="fp32",
)


def preset(name: str):
    def deco(fn: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
        PRESETS[name] = fn
        return fn

    return deco


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    cfg.preset = name
    return resolve(cfg)


@preset("nestar-fmnist")
def _nestar_fmnist() -> RunConfig:
    """Fashion-MNIST 32x32, 4x4 pixel patches -> 8x8 grid of 16-d tokens, k=4 (10 steps).

    The head-to-head model (docs/results.md): the baselines below share its data, tokenizer,
    training budget (800 x 64) and sampling settings.
    """
    return RunConfig(
        model=NestARConfig(
            k=4,
            order="lattice",
            dim=192,
            depth=4,
            z_dim=192,
            head=FlowHeadConfig(width=256, depth=3),
        ),
        tokenizer=TokenizerConfig(patch_size=4),
        train=TrainConfig(
            steps=800,
            batch_size=64,
            lr=1e-3,
            warmup_steps=50,
            log_every=25,
            sample_every=400,
            ckpt_every=200,
        ),
        # Constant guidance: higher class agreement than the linear ramp (docs/results.md, "Defaults").
        sample=SampleConfig(cfg=3.0, cfg_schedule="constant", temperature=1.0, num_steps=25),
    )


@preset("nestar-fmnist-fast")
def _nestar_fmnist_fast() -> RunConfig:
    """nestar-fmnist sampled with Heun, 5 flow-head steps: 9 head evaluations per token instead of 25.

    Same model, training and guidance; only `sample.head_sampler` / `sample.num_steps` differ, so a
    trained nestar-fmnist samples this way with those two overrides. Chosen from the NFE sweep
    (docs/results.md section 7): the cheapest setting that keeps FID and recall close to 25 Euler
    steps; Euler at 8 steps keeps FID but loses recall.
    """
    base = _nestar_fmnist()
    base.sample = replace(base.sample, head_sampler="heun", num_steps=5)
    return base


@preset("nestar-fmnist-demo")
def _nestar_fmnist_demo() -> RunConfig:
    """The demo (`nestar demo`): nestar-fmnist budgeted to ~10 min of fp32 on 2 AVX2 cores.

    Same tokens, order and sampling; 2.8M parameters (width 128, head 128 x 3 with one noise draw per
    token) and 1,200 steps of 32 images: ~6x less fp32 time per training image than nestar-fmnist
    (docs/design.md, "The demo's budget"). fp32 even where bf16 is native: at this size bf16
    autocast is slower (docs/results.md, "Measurements behind defaults").
    """
    base = _nestar_fmnist()
    base.model = NestARConfig(
        k=4,
        order="lattice",
        dim=128,
        depth=4,
        z_dim=128,
        head=FlowHeadConfig(width=128, depth=3, batch_mul=1),
    )
    base.train = TrainConfig(
        steps=1200,
        batch_size=32,
        lr=1e-3,
        warmup_steps=50,
        log_every=50,
        sample_every=0,
        ckpt_every=300,
        precision="fp32",
    )
    return base


# ----- baselines matched to nestar-fmnist (the quality benchmark, benchmarks/quality.py) -----------
# Same data, tokenizer, training budget and sampling settings as the demo; the flow-head models share
# its head (256 x 3, 25 steps). Sizes chosen so that parameter counts lie within 10% of nestar-fmnist.


def _fmnist_like(model_type: str, model: Any) -> RunConfig:
    base = _nestar_fmnist()
    return RunConfig(
        model_type=model_type,
        model=model,
        data=base.data,
        tokenizer=base.tokenizer,
        train=base.train,
        sample=base.sample,
    )


@preset("raster-fmnist")
def _raster_fmnist() -> RunConfig:
    """Raster AR matched to nestar-fmnist: 12 causal blocks x 192, KV cache, 64 steps."""
    return _fmnist_like(
        "raster",
        RasterARConfig(dim=192, depth=12, z_dim=192, head=FlowHeadConfig(width=256, depth=3)),
    )


@preset("mar-fmnist")
def _mar_fmnist() -> RunConfig:
    """MAR matched to nestar-fmnist: encoder/decoder 6+6 blocks x 192, 64 buffer tokens, 64 steps."""
    return _fmnist_like(
        "mar",
        MARConfig(
            dim=192,
            enc_depth=6,
            dec_depth=6,
            buffer_size=64,
            num_iter=64,
            head=FlowHeadConfig(width=256, depth=3),
        ),
    )


@preset("arinar-fmnist")
def _arinar_fmnist() -> RunConfig:
    """ARINAR matched to nestar-fmnist: MAR 6+6 blocks x 192, inner-AR GMM head (K=4), 64 steps."""
    return _fmnist_like(
        "arinar",
        ARINARConfig(
            dim=192,
            enc_depth=6,
            dec_depth=6,
            buffer_size=64,
            num_iter=64,
            head=GMMHeadConfig(width=256, depth=1, num_gaussians=4),
        ),
    )


@preset("nextscale-fmnist")
def _nextscale_fmnist() -> RunConfig:
    """Next-scale (FlowAR-style) matched to nestar-fmnist: scales 1, 2, 4, 8, 12 blocks x 192, 4 steps."""
    return _fmnist_like(
        "nextscale",
        NextScaleConfig(dim=192, depth=12, z_dim=192, head=FlowHeadConfig(width=256, depth=3)),
    )


@preset("nestar-s")
def _nestar_s() -> RunConfig:
    """Small NestAR on a 16x16 token grid (2x2 pixel patches), k=4: 13 sequential steps."""
    return RunConfig(
        model=NestARConfig(
            k=4,
            order="lattice",
            order_offset=4,  # module 1 at the quadrant centres of a 16x16 grid
            dim=256,
            depth=6,
            z_dim=256,
            head=FlowHeadConfig(width=256, depth=3),
        ),
        tokenizer=TokenizerConfig(patch_size=2),
    )


@preset("nestar-tiny")
def _nestar_tiny() -> RunConfig:
    """For tests and smoke runs: seconds per hundred steps on a CPU."""
    return RunConfig(
        model=NestARConfig(
            k=4,
            dim=32,
            depth=1,
            z_dim=32,
            head_dim=16,
            head=FlowHeadConfig(width=32, depth=1, num_steps=4),
        ),
        tokenizer=TokenizerConfig(patch_size=4),
        train=TrainConfig(**_TINY_TRAIN),
        sample=SampleConfig(cfg=2.0, num_steps=4),
    )


@preset("arinar-s")
def _arinar_s() -> RunConfig:
    """ARINAR baseline matched to nestar-s: MAR 12+12 blocks x 256, inner-AR GMM head (K=4), 64 steps."""
    return RunConfig(
        model_type="arinar",
        model=ARINARConfig(
            dim=256,
            enc_depth=12,
            dec_depth=12,
            buffer_size=64,
            num_iter=64,
            head=GMMHeadConfig(width=256, depth=1, num_gaussians=4),
        ),
        tokenizer=TokenizerConfig(patch_size=2),
    )


@preset("arinar-tiny")
def _arinar_tiny() -> RunConfig:
    """ARINAR for tests and smoke runs (8x8 grid, 8 outer steps, 100 guidance candidates)."""
    return RunConfig(
        model_type="arinar",
        model=ARINARConfig(
            dim=32,
            enc_depth=1,
            dec_depth=1,
            head_dim=16,
            buffer_size=2,
            num_iter=8,
            head=GMMHeadConfig(width=32, depth=1, num_heads=2, num_candidates=100),
        ),
        tokenizer=TokenizerConfig(patch_size=4),
        train=TrainConfig(**_TINY_TRAIN),
        sample=SampleConfig(cfg=2.0, num_steps=4),
    )


# ----- baselines matched to nestar-s (same data, tokenizer, head and head steps) ----------------


@preset("raster-s")
def _raster_s() -> RunConfig:
    """Raster AR baseline matched to nestar-s: one causal transformer, 24 blocks x 256, KV cache, 256 steps."""
    return RunConfig(
        model_type="raster",
        model=RasterARConfig(dim=256, depth=24, z_dim=256, head=FlowHeadConfig(width=256, depth=3)),
        tokenizer=TokenizerConfig(patch_size=2),
    )


@preset("raster-tiny")
def _raster_tiny() -> RunConfig:
    """Raster AR for tests and smoke runs (8x8 grid: 64 steps)."""
    return RunConfig(
        model_type="raster",
        model=RasterARConfig(
            dim=32,
            depth=1,
            z_dim=32,
            head_dim=16,
            head=FlowHeadConfig(width=32, depth=1, num_steps=4),
        ),
        tokenizer=TokenizerConfig(patch_size=4),
        train=TrainConfig(**_TINY_TRAIN),
        sample=SampleConfig(cfg=2.0, num_steps=4),
    )


@preset("mar-s")
def _mar_s() -> RunConfig:
    """MAR baseline matched to nestar-s: encoder/decoder 12+12 blocks x 256, 64 buffer tokens, 64 steps."""
    return RunConfig(
        model_type="mar",
        model=MARConfig(
            dim=256,
            enc_depth=12,
            dec_depth=12,
            buffer_size=64,
            num_iter=64,
            head=FlowHeadConfig(width=256, depth=3),
        ),
        tokenizer=TokenizerConfig(patch_size=2),
    )


@preset("mar-tiny")
def _mar_tiny() -> RunConfig:
    """MAR for tests and smoke runs (8x8 grid, 8 outer steps)."""
    return RunConfig(
        model_type="mar",
        model=MARConfig(
            dim=32,
            enc_depth=1,
            dec_depth=1,
            head_dim=16,
            buffer_size=2,
            num_iter=8,
            head=FlowHeadConfig(width=32, depth=1, num_steps=4),
        ),
        tokenizer=TokenizerConfig(patch_size=4),
        train=TrainConfig(**_TINY_TRAIN),
        sample=SampleConfig(cfg=2.0, num_steps=4),
    )


@preset("nextscale-s")
def _nextscale_s() -> RunConfig:
    """FlowAR-style next-scale baseline matched to nestar-s: scales 1..16, 24 blocks x 256, 5 steps."""
    return RunConfig(
        model_type="nextscale",
        model=NextScaleConfig(
            dim=256, depth=24, z_dim=256, head=FlowHeadConfig(width=256, depth=3)
        ),
        tokenizer=TokenizerConfig(patch_size=2),
    )


@preset("nextscale-tiny")
def _nextscale_tiny() -> RunConfig:
    """Next-scale for tests and smoke runs (8x8 grid: scales 1, 2, 4, 8, 4 steps)."""
    return RunConfig(
        model_type="nextscale",
        model=NextScaleConfig(
            dim=32,
            depth=1,
            z_dim=32,
            head_dim=16,
            head=FlowHeadConfig(width=32, depth=1, num_steps=4),
        ),
        tokenizer=TokenizerConfig(patch_size=4),
        train=TrainConfig(**_TINY_TRAIN),
        sample=SampleConfig(cfg=2.0, num_steps=4),
    )


# ----- ImageNet 256x256 with the KL-16 VAE (docs/scaling.md) --------------------------------------
# 16x16 grid of 16-d latents, k=4: M=4 modules, 13 sequential steps. Widths and head sizes follow
# MAR-B/L/H (768/1024/1280; flow head 1024x6 / 1280x8 / 1536x12); the 24/32/40 transformer blocks of
# MAR's encoder+decoder are split evenly over the 4 modules (the first module keeps full size: a
# too-small first module is known to cut diversity). Parameters (build_model(...).num_params()):
# nestar-b 212.9M, nestar-l 486.0M, nestar-h 953.3M (MAR-B/L/H: 208M/479M/943M).
IMAGENET_TRAIN_IMAGES = 1_281_167


def _imagenet(
    dim: int,
    depth: int,
    head_width: int,
    head_depth: int,
    *,
    grad_accum: int,
    parallel: str,
    batch: int = 2048,
    epochs: int = 800,
    warmup_epochs: int = 100,
    blr: float = 1e-4,
) -> RunConfig:
    """MAR's recipe: AdamW(0.9, 0.95), weight decay 0.02, lr = blr * global batch / 256 (8e-4 at
    2048), constant after a linear warm-up of 100 epochs, EMA 0.9999, grad clip 3.0, precision auto
    (bf16 on GPUs), label dropout 0.1, 800 epochs. Epochs -> steps: 1,281,167 // 2048 = 625 steps
    per epoch (the sampler drops the last partial batch): warm-up 62,500 steps, 500,000 steps in
    all. Keep lr proportional to the global batch if you change it (--train.batch_size=B
    --train.lr=1e-4*B/256). `grad_accum` is set for 1 node x 8 GPUs (micro-batch = 2048 /
    (8 x grad_accum) per GPU); set it so that world_size x grad_accum x micro-batch = 2048 on other
    clusters. data.data_dir must point at the ImageNet train folder (one sub-folder per class) and
    tokenizer.path at a local kl16.ckpt."""
    per_epoch = IMAGENET_TRAIN_IMAGES // batch
    return RunConfig(
        model=NestARConfig(
            k=4,
            order="lattice",
            order_offset=4,  # module 1 at the quadrant centres of the 16x16 latent grid
            dim=dim,
            depth=depth,
            z_dim=dim,
            head_dim=64,
            label_dropout=0.1,
            head=FlowHeadConfig(width=head_width, depth=head_depth, batch_mul=4, num_steps=50),
        ),
        data=DataConfig(
            name="folder",
            data_dir="data/imagenet/train",
            image_size=256,
            channels=3,
            num_classes=1000,
        ),
        tokenizer=TokenizerConfig(name="kl16"),
        train=TrainConfig(
            steps=epochs * per_epoch,
            batch_size=batch,
            lr=blr * batch / 256,
            warmup_steps=warmup_epochs * per_epoch,
            lr_schedule="constant",
            weight_decay=0.02,
            betas=(0.9, 0.95),
            grad_clip=3.0,
            ema_decay=0.9999,
            precision="auto",
            log_every=100,
            sample_every=10_000,
            ckpt_every=5_000,
            num_workers=8,
            grad_accum=grad_accum,
            parallel=parallel,
        ),
        sample=SampleConfig(
            cfg=3.0, cfg_schedule="linear", temperature=1.0, num_steps=50
        ),  # not tuned
    )


@preset("nestar-b")
def _nestar_b() -> RunConfig:
    """ImageNet 256, KL-16, 212.9M parameters (MAR-B sized): 4 modules x 6 blocks x 768, head 1024x6."""
    return _imagenet(768, 6, 1024, 6, grad_accum=2, parallel="ddp")


@preset("nestar-l")
def _nestar_l() -> RunConfig:
    """ImageNet 256, KL-16, 486.0M parameters (MAR-L sized): 4 modules x 8 blocks x 1024, head 1280x8."""
    return _imagenet(1024, 8, 1280, 8, grad_accum=4, parallel="ddp")


@preset("nestar-h")
def _nestar_h() -> RunConfig:
    """ImageNet 256, KL-16, 953.3M parameters (MAR-H sized): 4 modules x 10 blocks x 1280, head 1536x12."""
    return _imagenet(1280, 10, 1536, 12, grad_accum=4, parallel="fsdp")


def load_run_config(data: dict, overrides: Optional[list[str]] = None) -> RunConfig:
    from nestar.config import apply_overrides

    cfg = RunConfig.from_dict(data)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return resolve(cfg)
