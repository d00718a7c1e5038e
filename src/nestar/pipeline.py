"""Pipeline: class labels -> images (diffusers-style), with save_pretrained / from_pretrained."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from nestar.config import ConfigError
from nestar.heads.flow_mlp import flow_solver
from nestar.models.base import GenerativeModel
from nestar.pretrained import describe_available, pretrained_dir
from nestar.tokenizers import Tokenizer, build_tokenizer
from nestar.serialization import (
    CheckpointError,
    load_model_from_checkpoint,
    load_pretrained,
    save_pretrained,
)
from nestar.utils.device import parse_device
from nestar.utils.precision import Precision, resolve_precision


@dataclass
class PipelineOutput:
    images: torch.Tensor  # (B, C, H, W) in [-1, 1]
    intermediates: list[torch.Tensor] = field(default_factory=list)  # one image batch per stage
    sequential_steps: int = 0
    known: list[torch.Tensor] = field(
        default_factory=list
    )  # per stage, bool (G, G): tokens generated so far


class Pipeline:
    """A trained generator plus its tokenizer and run config; None sampling arguments use config.sample."""

    def __init__(
        self, model: GenerativeModel, tokenizer: Tokenizer, config, source: Optional[Path] = None
    ):
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self.source = (
            source  # where from_pretrained read it (its metrics go into save_pretrained's card)
        )

    @property
    def precision(self) -> Precision:
        """config.sample.precision resolved on the model's device ('auto': bf16 only where native)."""
        return resolve_precision(self.config.sample.precision, self.device, "sample.precision")

    @classmethod
    def from_pretrained(cls, path, device: str = "cpu", use_ema: bool = True) -> "Pipeline":
        """`path`: a run directory, a checkpoint .safetensors file, a save_pretrained directory, the
        name of a model that ships with the package (`nestar.pretrained.available()`, e.g.
        'nestar-fmnist'), or a Hugging Face Hub repo id 'owner/name[@revision]' (nestar.hub). An
        existing local path wins over a shipped name, which wins over a Hub id."""
        device = parse_device(str(device), "--device")  # before reading a large checkpoint
        p = Path(path)
        if not p.exists() and pretrained_dir(str(path)) is not None:
            p = pretrained_dir(str(path))
        if not p.exists():
            from nestar import hub

            if hub.parse_repo_id(str(path)):
                p = hub.download(str(path))
        if p.is_dir() and (p / "checkpoints" / "last.safetensors").is_file():
            model, config = load_model_from_checkpoint(
                p / "checkpoints" / "last.safetensors", use_ema
            )
        elif p.is_file() and p.name == "model.safetensors" and (p.parent / "config.json").is_file():
            model, config = load_pretrained(p.parent)
        elif p.is_file():
            model, config = load_model_from_checkpoint(p, use_ema)
        elif p.is_dir() and (p / "model.safetensors").is_file():
            model, config = load_pretrained(p)
        else:
            raise CheckpointError(
                f"{p} is neither a run directory (checkpoints/last.safetensors), a checkpoint "
                f"file, a saved model (model.safetensors + config.json), nor the name of a "
                f"shipped pretrained model ({describe_available()})"
            )
        tok = build_tokenizer(config.tokenizer, config.data.image_size, config.data.channels)
        return cls(model.to(device), tok.to(device).eval(), config, source=p)

    def save_pretrained(
        self, directory, metrics: Optional[dict] = None, repo_id: Optional[str] = None
    ) -> Path:
        """Write `model.safetensors` + `config.json` + a `README.md` model card (the Hub layout);
        `Pipeline.from_pretrained(directory)` reads them back. `metrics` (default: those found where
        the pipeline was loaded from) go into the card and `metrics.json`; `repo_id` into its usage lines."""
        from nestar.model_card import write_model_card

        out = save_pretrained(directory, self.model, self.config)
        write_model_card(out, self, metrics, repo_id)
        return out

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload weights, config and model card to the Hub (nestar.hub.push_to_hub); returns the commit URL."""
        from nestar.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def __call__(
        self,
        labels,
        *,
        guidance_scale: Optional[float] = None,
        cfg_schedule: Optional[str] = None,
        temperature: Optional[float] = None,
        num_steps: Optional[int] = None,
        head_sampler: Optional[str] = None,
        time_grid: Optional[str] = None,
        generator: Optional[torch.Generator] = None,
        batch_size: int = 64,
    ) -> PipelineOutput:
        """Sample images for `labels`; None arguments use config.sample.

        `head_sampler` ('euler' | 'heun') and `time_grid` ('uniform' | 'data' | 'noise') choose the
        flow head's solver (docs/design.md, "Flow head"); with `num_steps` they set the head's NFE.

        Chunks of `batch_size` are sampled in order from the one `generator` (default: seeded with
        config.sample.seed), so the same seed and batch_size give the same images.
        """
        # Validated like the config (ConfigError naming the field): a bad value fails before sampling.
        s = dataclasses.replace(
            self.config.sample,
            **{
                k: v
                for k, v in dict(
                    cfg=guidance_scale,
                    cfg_schedule=cfg_schedule,
                    temperature=temperature,
                    num_steps=num_steps,
                    head_sampler=head_sampler,
                    time_grid=time_grid,
                ).items()
                if v is not None
            },
        )
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 0:
            raise ValueError("labels is empty: pass at least one class id")
        n = self.config.data.num_classes
        if labels.min() < 0 or labels.max() >= n:
            raise ConfigError(
                f"class labels must be in [0, {n}), got {labels.min().item()}..{labels.max().item()}"
            )
        if generator is None:
            generator = torch.Generator().manual_seed(s.seed)
        images, stages, steps, known = [], [], 0, []
        prec = self.precision
        for chunk in labels.split(
            batch_size
        ):  # one generator consumed in order: same seed, same images
            with (
                prec.autocast(self.device.type),
                flow_solver(self.model, s.head_sampler, s.time_grid),
            ):
                out = self.model.sample(
                    chunk,
                    guidance_scale=s.cfg,
                    cfg_schedule=s.cfg_schedule,
                    temperature=s.temperature,
                    num_steps=s.num_steps,
                    generator=generator,
                )
            images.append(self.tokenizer.decode(out.tokens.float()).clamp(-1, 1))
            stages.append(
                [self.tokenizer.decode(t.float()).clamp(-1, 1) for t in out.intermediates]
            )
            steps, known = out.sequential_steps, out.known
        inter = (
            [torch.cat([st[i] for st in stages]) for i in range(len(stages[0]))]
            if stages and stages[0]
            else []
        )
        g = math.isqrt(out.tokens.shape[1])
        return PipelineOutput(
            images=torch.cat(images),
            intermediates=inter,
            sequential_steps=steps,
            known=[k.reshape(g, g).cpu() for k in known],
        )
