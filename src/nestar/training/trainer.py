"""The trainer shared by every model: AdamW + warm-up (+ cosine), EMA, clipping, bf16 autocast,
sample grids, CSV log, atomic checkpoints, auto-resume, and a NaN stop that keeps the last good
checkpoint."""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from nestar.config import save_json
from nestar.data import build_dataset, to_float
from nestar.registry import RunConfig, build_model, config_to_dict
from nestar.tokenizers import build_tokenizer
from nestar.training.checkpoint import load_checkpoint, save_checkpoint, save_pretrained
from nestar.training.data_order import StepBatchSampler, collate
from nestar.training.ema import EMA
from nestar.utils.images import save_grid


class TrainingDivergedError(RuntimeError):
    """The loss or gradient became NaN/inf; no update was applied and no checkpoint written."""


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    seconds: float
    images_per_sec: float
    run_dir: Path
    checkpoint: Path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(step: int, cfg) -> float:
    """Linear warm-up over `warmup_steps`, then constant or cosine down to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW without weight decay on vectors (biases, norms) as in MAR."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


class Trainer:
    """Trains `build_model(cfg)` on `cfg.data`; re-creating it on the same run_dir resumes."""

    def __init__(self, cfg: RunConfig, run_dir, *, resume: bool = True, progress: bool = True, dataset=None):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.device = resolve_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg).to(self.device)
        self.ema = EMA(self.model)
        self.tokenizer = build_tokenizer(cfg.tokenizer, cfg.data.image_size, cfg.data.channels).to(self.device)
        self.dataset = dataset if dataset is not None else build_dataset(cfg.data, "train")
        self.optimizer = make_optimizer(self.model, cfg.train)
        self.ckpt_path = self.run_dir / "checkpoints" / "last.safetensors"
        self.step = 0
        if resume and self.ckpt_path.exists():  # a mismatch raises before anything is written
            state = load_checkpoint(self.ckpt_path, model=self.model, ema=self.ema.module,
                                    optimizer=self.optimizer, config=cfg, restore_rng=True)
            self.step = state["step"]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_json(config_to_dict(cfg), self.run_dir / "config.json")

    # -- pieces ------------------------------------------------------------------------------
    def _batches(self):
        sampler = StepBatchSampler(len(self.dataset), self.cfg.train.batch_size, self.cfg.train.seed, self.step)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,
                                             num_workers=self.cfg.train.num_workers)
        return iter(loader)

    def _save(self, loss: float) -> None:
        save_checkpoint(self.ckpt_path, model=self.model, ema=self.ema.module, optimizer=self.optimizer,
                        step=self.step, config=self.cfg, extra={"loss": loss})

    def _log(self, row: dict) -> None:
        path = self.run_dir / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def sample_grid(self, path, per_class: int = 8) -> Path:
        s = self.cfg.sample
        labels = torch.arange(self.cfg.data.num_classes).repeat_interleave(per_class)
        out = self.ema.module.sample(labels, cfg=s.cfg, cfg_schedule=s.cfg_schedule, temperature=s.temperature,
                                     num_steps=s.num_steps, generator=torch.Generator().manual_seed(s.seed))
        return save_grid(self.tokenizer.decode(out.tokens), path, nrow=per_class, scale=2)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        tc = self.cfg.train
        tokens = self.tokenizer.encode(to_float(images.to(self.device)))
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=tc.bf16):
            out = self.model.loss({"tokens": tokens, "labels": labels.to(self.device)})
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise TrainingDivergedError(self._diverged_msg("loss", loss.item()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        if not torch.isfinite(gnorm):
            raise TrainingDivergedError(self._diverged_msg("gradient norm", gnorm.item()))
        lr = lr_at(self.step, tc)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.ema.update(self.model, self.step, tc.ema_decay)
        self.step += 1
        return {"loss": loss.item(), **{k: v.item() for k, v in out.items() if k != "loss"}, "lr": lr, "grad_norm": gnorm.item()}

    def _diverged_msg(self, what: str, value: float) -> str:
        last = f"the last good checkpoint {self.ckpt_path} is intact" if self.ckpt_path.exists() else "no checkpoint was written yet"
        return (f"{what} is {value} at step {self.step}: training stopped before the update; {last}. "
                f"Try a lower --train.lr, --train.bf16=False or a smaller --train.grad_clip.")

    # -- loop --------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        tc = self.cfg.train
        start_step, t0 = self.step, time.perf_counter()
        busy, last = 0.0, {"loss": float("nan")}
        self.model.train()
        bar = tqdm(total=tc.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True, desc="train")
        batches = self._batches() if self.step < tc.steps else None
        saved_at = -1
        while self.step < tc.steps:
            images, labels = next(batches)
            ts = time.perf_counter()
            last = self.train_step(images, labels)
            busy += time.perf_counter() - ts
            ips = (self.step - start_step) * tc.batch_size / max(busy, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{ips:.0f}")
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                self._log({"step": self.step, **{k: round(v, 6) for k, v in last.items()},
                           "images_per_sec": round(ips, 1), "elapsed_s": round(time.perf_counter() - t0, 1)})
            if tc.sample_every and self.step % tc.sample_every == 0:
                self.sample_grid(self.run_dir / "samples" / f"step_{self.step:06d}.png")
            if self.step % tc.ckpt_every == 0 or self.step == tc.steps:
                self._save(last["loss"])
                saved_at = self.step
        bar.close()
        if saved_at != self.step and not self.ckpt_path.exists():
            self._save(last["loss"])
        save_pretrained(self.run_dir / "model", self.ema.module, self.cfg)
        steps_done = self.step - start_step
        return TrainResult(steps=self.step, final_loss=last["loss"], seconds=time.perf_counter() - t0,
                           images_per_sec=steps_done * tc.batch_size / busy if busy else 0.0,
                           run_dir=self.run_dir, checkpoint=self.ckpt_path)
