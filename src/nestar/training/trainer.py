"""The trainer shared by every model: AdamW + warm-up (+ cosine), EMA, clipping, bf16 autocast,
sample grids, CSV log, atomic checkpoints, auto-resume, and a NaN stop that keeps the last good
checkpoint.

Resuming is exact: the batch at step s is a function of (seed, s) (see data_order), the RNG state
is stored in the checkpoint, and the LR / EMA decay are functions of the step.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from nestar.config import save_json
from nestar.data import build_dataset, to_float
from nestar.registry import RunConfig, build_model, config_to_dict, resolve
from nestar.tokenizers import build_tokenizer
from nestar.training.checkpoint import load_checkpoint, save_checkpoint, save_pretrained
from nestar.training.data_order import StepBatchSampler, collate
from nestar.training.ema import make_ema, update_ema
from nestar.training.lr import apply_hparams, lr_at, make_optimizer
from nestar.utils.images import save_grid

__all__ = ["Trainer", "TrainResult", "TrainingDivergedError", "lr_at", "make_optimizer", "resolve_device"]


class TrainingDivergedError(RuntimeError):
    """The loss or gradient became NaN/inf; no update was applied and no checkpoint written."""


@dataclass
class TrainResult:
    steps: int  # global step reached (including steps of earlier, resumed invocations)
    final_loss: float  # loss of the last update (nan if this invocation did none)
    seconds: float
    images_per_sec: float
    run_dir: Path
    checkpoint: Path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Trains `build_model(cfg)` on `cfg.data` (or `dataset`); re-creating it on the same run_dir resumes.

    Attributes: `model`, `ema` (an eval-mode copy holding the EMA weights), `tokenizer`, `optimizer`,
    `device`, `step` (updates done so far).
    """

    def __init__(self, cfg: RunConfig, run_dir, *, resume: bool = True, progress: bool = True, dataset=None):
        cfg = resolve(cfg)
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.device = resolve_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)
        tok = build_tokenizer(cfg.tokenizer, cfg.data.image_size, cfg.data.channels)
        self.tokenizer = tok.to(self.device).eval().requires_grad_(False)  # frozen (VAE tokenizers too)
        self.model = build_model(cfg).to(self.device)
        self.ema = make_ema(self.model)
        self.optimizer = make_optimizer(self.model, cfg.train)
        self.dataset = dataset if dataset is not None else build_dataset(cfg.data, "train")
        self.ckpt_path = self.run_dir / "checkpoints" / "last.safetensors"
        self.step = 0
        self.ckpt_step: Optional[int] = None  # step of the last checkpoint this run wrote or resumed from
        if resume and self.ckpt_path.exists():  # a mismatch raises before anything is written
            state = load_checkpoint(self.ckpt_path, model=self.model, ema=self.ema, optimizer=self.optimizer,
                                    config=cfg, restore_rng=True)
            self.step = self.ckpt_step = state["step"]
            apply_hparams(self.optimizer, cfg.train)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_json(config_to_dict(cfg), self.run_dir / "config.json")
        self._trim_log()

    # -- pieces ------------------------------------------------------------------------------
    def _batches(self):
        tc = self.cfg.train
        sampler = StepBatchSampler(len(self.dataset), tc.batch_size, tc.seed, self.step)
        # An own generator: the default one would draw from the global RNG and break exact resume.
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,
                                             num_workers=tc.num_workers, pin_memory=self.device.type == "cuda",
                                             generator=torch.Generator().manual_seed(tc.seed + self.step))
        return iter(loader)

    def _save(self, loss: float) -> None:
        save_checkpoint(self.ckpt_path, model=self.model, ema=self.ema, optimizer=self.optimizer,
                        step=self.step, config=self.cfg, extra={"loss": loss})
        self.ckpt_step = self.step

    def _trim_log(self) -> None:
        """Drop log rows past the resumed step (written after the last checkpoint of a crashed run)."""
        path = self.run_dir / "log.csv"
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= self.step]
        if len(keep) == len(rows):
            return
        if not keep:
            path.unlink()
            return
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(keep)

    def _log(self, row: dict) -> None:
        path = self.run_dir / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    @torch.no_grad()
    def sample_grid(self, path, per_class: int = 8) -> Path:
        """A PNG of EMA samples, one row per class, from the fixed seed in cfg.sample."""
        s = self.cfg.sample
        labels = torch.arange(self.cfg.data.num_classes).repeat_interleave(per_class)
        out = self.ema.sample(labels, cfg=s.cfg, cfg_schedule=s.cfg_schedule, temperature=s.temperature,
                              num_steps=s.num_steps, generator=torch.Generator().manual_seed(s.seed))
        return save_grid(self.tokenizer.decode(out.tokens).clamp(-1, 1), path, nrow=per_class, scale=2)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One update; raises TrainingDivergedError before touching weights if loss or grad is not finite."""
        tc = self.cfg.train
        with torch.no_grad():
            tokens_BLC = self.tokenizer.encode(to_float(images.to(self.device, non_blocking=True)))
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=tc.bf16):
            out = self.model.loss({"tokens": tokens_BLC, "labels": labels.to(self.device)})
        loss = out["loss"].float()
        if not torch.isfinite(loss):
            raise TrainingDivergedError(self._diverged_msg("loss", loss.item()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if not torch.isfinite(gnorm):
            raise TrainingDivergedError(self._diverged_msg("gradient norm", gnorm.item()))
        lr = lr_at(self.step, tc)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        update_ema(self.ema, self.model, self.step, tc.ema_decay)
        self.step += 1
        parts = {k: float(v) for k, v in out.items() if k != "loss"}
        return {"loss": loss.item(), **parts, "lr": lr, "grad_norm": gnorm.item()}

    def _diverged_msg(self, what: str, value: float) -> str:
        if self.ckpt_step is not None:
            last = f"the last good checkpoint {self.ckpt_path} (step {self.ckpt_step}) is intact"
        else:
            last = "no checkpoint of this run was written yet"
        return (f"{what} is {value} at step {self.step + 1}: training stopped before the update; {last}. "
                f"Check the data, or try a lower --train.lr, --train.bf16=False or a smaller --train.grad_clip.")

    # -- loop --------------------------------------------------------------------------------
    def fit(self, max_steps: Optional[int] = None) -> TrainResult:
        """Train to cfg.train.steps (or stop early at global step `max_steps`, checkpointing there)."""
        tc = self.cfg.train
        end = tc.steps if max_steps is None else min(tc.steps, max_steps)
        start_step, t0 = self.step, time.perf_counter()
        busy, last = 0.0, {"loss": float("nan")}
        self.model.train()
        bar = tqdm(total=tc.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True, desc="train")
        try:
            batches = self._batches() if self.step < end else None
            while self.step < end:
                ts = time.perf_counter()
                images, labels = next(batches)
                last = self.train_step(images, labels)
                busy += time.perf_counter() - ts
                ips = (self.step - start_step) * tc.batch_size / max(busy, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{ips:.0f}")
                if (tc.log_every and self.step % tc.log_every == 0) or self.step == end:
                    self._log({"step": self.step, **{k: round(v, 6) for k, v in last.items()},
                               "images_per_sec": round(ips, 1), "elapsed_s": round(time.perf_counter() - t0, 1)})
                if tc.sample_every and self.step % tc.sample_every == 0:
                    self.sample_grid(self.run_dir / "samples" / f"step_{self.step:06d}.png")
                if (tc.ckpt_every and self.step % tc.ckpt_every == 0) or self.step == end:
                    self._save(last["loss"])
        finally:
            bar.close()
        if not self.ckpt_path.exists():  # nothing to do (step >= end) on a fresh, resume=False run dir
            self._save(last["loss"])
        save_pretrained(self.run_dir / "model", self.ema, self.cfg)
        return TrainResult(steps=self.step, final_loss=last["loss"], seconds=time.perf_counter() - t0,
                           images_per_sec=(self.step - start_step) * tc.batch_size / busy if busy else 0.0,
                           run_dir=self.run_dir, checkpoint=self.ckpt_path)
