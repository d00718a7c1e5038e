"""The trainer shared by every model: AdamW + warm-up (+ cosine), EMA, clipping, bf16 autocast,
sample grids, CSV log, atomic checkpoints, auto-resume, and a NaN stop that keeps the last good
checkpoint.

Resuming is exact: the batch at step s is a function of (seed, s) (see data_order), the training
randomness of each micro-batch is re-seeded from (seed, step, global micro-batch index), and the LR /
EMA decay are functions of the step.

Under torchrun the same Trainer runs data-parallel (DDP or FSDP2, `train.parallel`), with gradient
accumulation (`train.grad_accum`); rank 0 alone logs, samples and writes checkpoints. See
training/distributed.py and docs/scaling.md.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from nestar.config import ConfigError, save_json
from nestar.data import build_dataset, collate, to_float
from nestar.errors import DataError, RunLockedError, UserError
from nestar.registry import RunConfig, build_model, config_to_dict, resolve
from nestar.tokenizers import build_tokenizer
from nestar.training import distributed as D
from nestar.serialization import (
    CheckpointCorruptError,
    CheckpointError,
    check_config,
    load_checkpoint,
    nonfinite_report,
    read_checkpoint_info,
    read_optimizer_state,
    save_pretrained,
    write_checkpoint,
)
from nestar.training.data_order import StepBatchSampler
from nestar.training.ema import make_ema, update_ema
from nestar.training.lr import apply_hparams, lr_at, make_optimizer
from nestar.training.resume import last_logged_loss, reconcile_resume
from nestar.training.tensorboard_log import TensorBoardLogger
from nestar.utils.images import save_grid
from nestar.utils.io import atomic_write_text, remove_orphan_tmp
from nestar.utils.lock import RunLock
from nestar.utils.precision import resolve_precision

__all__ = ["Trainer", "TrainResult", "TrainingDivergedError", "lr_at", "make_optimizer"]


class TrainingDivergedError(UserError, RuntimeError):
    """The loss, gradient or weights became NaN/inf; no checkpoint with non-finite values is written."""


@dataclass
class TrainResult:
    steps: int  # global step reached (including steps of earlier, resumed invocations)
    final_loss: (
        float  # loss of the last update (if this invocation did none: the last one in log.csv)
    )
    seconds: float
    images_per_sec: float
    run_dir: Path
    checkpoint: Path
    precision: str = "fp32"  # what the forward passes ran in: 'fp32' or 'bf16' autocast


class _MicroBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's share of each step's global batch (StepBatchSampler), cut into grad_accum micro-batches."""

    def __init__(self, steps: StepBatchSampler, grad_accum: int):
        self.steps, self.accum = steps, grad_accum

    def __iter__(self):
        for idx in self.steps:
            size = len(idx) // self.accum
            for j in range(self.accum):
                yield idx[j * size : (j + 1) * size]

    def __len__(self) -> int:
        return len(self.steps)


class Trainer:
    """Trains `build_model(cfg)` on `cfg.data` (or `dataset`); re-creating it on the same run_dir resumes.

    `dataset` items are (uint8 image [C, H, W], label), encoded by the tokenizer each step, or
    (float tokens [L, C], label), used as they are (a latent cache: `data.latents.CachedLatentDataset`).

    Attributes: `model` (the model; its parameters are DTensor shards under FSDP), `ema` (an
    eval-mode copy holding the EMA weights; under FSDP refreshed at checkpoints, sample grids and the
    end of `fit`), `tokenizer`, `optimizer`, `device`, `dist` (DistEnv: rank, world size, backend),
    `step` (updates done so far).
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_dir,
        *,
        resume: bool = True,
        progress: bool = True,
        dataset=None,
        allow_config_change: bool = False,
    ):
        cfg = resolve(cfg)
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self._allow_config_change = allow_config_change
        self.dist = D.init_distributed(cfg.train.device)
        # One writer per run directory (rank 0 holds the lock for all ranks); released when fit() ends.
        self._lock = RunLock(self.run_dir, "nestar train") if self.dist.is_main else None
        self._acquire_lock()
        try:
            self._setup(resume, dataset)
        except BaseException:
            self.close()
            raise

    def _setup(self, resume: bool, dataset) -> None:
        cfg, env = self.cfg, self.dist
        tc = cfg.train
        self.device = env.device
        # Resolved once per run; config.json and checkpoints record what ran ('fp32' or 'bf16').
        self.precision = resolve_precision(tc.precision, self.device, "train.precision")
        tc.precision = self.precision.name
        if env.is_main:
            print(f"nestar: {self.precision.describe()}", flush=True)
            self._remove_orphans()
        self.fsdp = env.enabled and tc.parallel == "fsdp"
        micro_batches = env.world_size * tc.grad_accum
        if tc.batch_size % micro_batches:
            raise ConfigError(
                f"train.batch_size={tc.batch_size} (the global batch) must be divisible by world_size x "
                f"train.grad_accum = {env.world_size} x {tc.grad_accum}"
            )
        torch.manual_seed(tc.seed)  # the same initial weights on every rank
        tok = build_tokenizer(cfg.tokenizer, cfg.data.image_size, cfg.data.channels)
        self.tokenizer = (
            tok.to(self.device).eval().requires_grad_(False)
        )  # frozen (VAE tokenizers too)
        self.model = build_model(cfg).to(self.device)
        self.ema = make_ema(self.model)
        self.optimizer = None if self.fsdp else make_optimizer(self.model, tc)
        if dataset is None and cfg.data.latent_cache:
            from nestar.data.latents import CachedLatentDataset

            dataset = CachedLatentDataset(
                cfg.data.latent_cache, tokenizer=tok, image_size=cfg.data.image_size
            )
        self.dataset = dataset if dataset is not None else build_dataset(cfg.data, "train")
        self._check_dataset()
        ckpt_dir = self.run_dir / "checkpoints"
        self.ckpt_path, self.prev_path = (
            ckpt_dir / "last.safetensors",
            ckpt_dir / "prev.safetensors",
        )
        self.step = 0
        self.ckpt_step: Optional[int] = (
            None  # step of the last checkpoint this run wrote or resumed from
        )
        self.ckpt_file: Optional[Path] = (
            None  # the file holding it (prev.safetensors after a fallback)
        )
        self._last_batch: Optional[dict] = None
        found = resume and (self.ckpt_path.exists() or self.prev_path.exists())
        every, anyone = D.all_agree(found, env)
        if every != anyone:
            raise CheckpointError(
                f"{self.ckpt_path} exists for some ranks but not others: the run directory must be "
                f"on a file system shared by all nodes"
            )
        if found:  # a mismatch raises before anything is written
            self._resume()  # also checks the settings against the checkpoint's (training/resume.py)
        else:
            self.notices = reconcile_resume(cfg, None, self.ckpt_path)
        for notice in self.notices:
            self._note(notice)
        if tc.activation_checkpointing:
            D.apply_activation_checkpointing(self.model)
        if tc.compile:
            D.compile_blocks(self.model)
        self._root = D.LossModule(self.model)
        self._sharded_ema: Optional[D.ShardedEMA] = None
        if self.fsdp:
            D.shard_fsdp(self._root, self.model, env, bf16=self.precision.bf16)
            self.optimizer = make_optimizer(self.model, tc)
            self._sharded_ema = D.ShardedEMA(self.model, self.ema)
            if found:
                try:
                    D.load_sharded_optimizer(self.optimizer, read_optimizer_state(self.ckpt_file))
                except (ValueError, KeyError) as e:
                    raise CheckpointError(
                        f"checkpoint {self.ckpt_file}: optimizer state does not fit ({e})"
                    ) from e
            self._train_module = self._root
        elif env.enabled:
            self._train_module = D.wrap_ddp(self._root, env)
        else:
            self._train_module = self._root
        if found:
            apply_hparams(self.optimizer, tc)
        D.barrier(env)  # every rank has read the checkpoint before rank 0 moves files
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if found and self.ckpt_file == self.prev_path and self.ckpt_path.exists():
                bad = self.ckpt_path.with_name(self.ckpt_path.name + ".corrupt")
                os.replace(
                    self.ckpt_path, bad
                )  # else the next save would rotate it over the good prev
                self._note(f"moved the unusable {self.ckpt_path.name} to {bad}")
            save_json(config_to_dict(cfg), self.run_dir / "config.json")
            self._trim_log()
        self._tb = (
            TensorBoardLogger(self.run_dir / "tensorboard", self.step)
            if tc.tensorboard and env.is_main
            else None
        )
        D.barrier(env)

    # -- run directory -----------------------------------------------------------------------
    def _note(self, msg: str) -> None:
        if self.dist.is_main:
            print(f"nestar: {msg}", flush=True)

    def _acquire_lock(self) -> None:
        """Lock the run directory on rank 0 (collective: every rank raises if rank 0 could not)."""
        err: Optional[UserError] = None
        if self._lock is not None:
            try:
                self._lock.acquire()
            except UserError as e:
                err = e
        ok, _ = D.all_agree(err is None, self.dist)
        if err is not None:
            raise err
        if not ok:
            raise RunLockedError(f"{self.run_dir} is locked by another run (reported by rank 0)")
        if self._lock is not None and self._lock.note:
            self._note(self._lock.note)
            self._lock.note = None

    def close(self) -> None:
        """Release the run directory's lock (fit() does this when it returns or raises)."""
        if self._lock is not None:
            self._lock.release()

    def _remove_orphans(self) -> None:
        """Delete temp files of writes a crash interrupted (we hold the lock: no live writer owns them)."""
        dirs = [self.run_dir, self.run_dir / "checkpoints", self.run_dir / "model"]
        n, size = remove_orphan_tmp(dirs)
        if n:
            self._note(
                f"removed {n} orphaned temporary file(s) ({size / 1e6:.1f} MB) left by an interrupted write"
            )

    def _check_dataset(self) -> None:
        tc, n_cls = self.cfg.train, self.cfg.data.num_classes
        skipped = len(getattr(self.dataset, "skipped", ()))
        if len(self.dataset) < tc.batch_size:
            raise DataError(
                f"the training data has {len(self.dataset)} usable item(s)"
                + (f" ({skipped} unreadable file(s) skipped)" if skipped else "")
                + f", fewer than one batch (train.batch_size={tc.batch_size}); add data or lower "
                f"--train.batch_size"
            )
        labels = getattr(self.dataset, "labels", None)
        if (
            torch.is_tensor(labels)
            and labels.numel()
            and (labels.min() < 0 or labels.max() >= n_cls)
        ):
            bad = int(((labels < 0) | (labels >= n_cls)).sum())
            raise DataError(
                f"{bad} training label(s) outside [0, {n_cls}) (data.num_classes={n_cls})"
            )

    def _resume(self) -> None:
        """Load last.safetensors, or prev.safetensors (with a message) when the last one is unusable."""
        candidates = [p for p in (self.ckpt_path, self.prev_path) if p.exists()]
        for i, path in enumerate(candidates):
            try:
                self._load(path)
                break
            except CheckpointCorruptError as e:
                if i + 1 == len(candidates):
                    raise
                self._note(
                    f"{e}; resuming from the previous checkpoint {candidates[i + 1]} instead"
                )
        every, anyone = D.all_agree(self.ckpt_file == self.prev_path, self.dist)
        if every != anyone:
            raise CheckpointError(
                f"the ranks disagree on which checkpoint of {self.run_dir} is readable: the run "
                f"directory must be on a file system shared by all nodes"
            )

    def _load(self, path: Path) -> None:
        tc, env = self.cfg.train, self.dist
        info = read_checkpoint_info(path)
        check_config(path, info["config"], self.cfg)
        train_cfg = info["config"].get("train", {})
        notice = D.check_world_size(
            path,
            {
                **info,
                "batch_size": train_cfg.get("batch_size", tc.batch_size)
                if isinstance(train_cfg, dict)
                else tc.batch_size,
            },
            world_size=env.world_size,
            grad_accum=tc.grad_accum,
            batch_size=tc.batch_size,
            allow=tc.allow_world_size_change,
        )
        self.notices = reconcile_resume(
            self.cfg, info, path, world_size=env.world_size, allow=self._allow_config_change
        )  # raises on unflagged changes
        state = load_checkpoint(
            path,
            model=self.model,
            ema=self.ema,
            optimizer=self.optimizer,
            config=self.cfg,
            restore_rng=True,
        )
        if notice:
            self._note(notice)
        self.step = self.ckpt_step = state["step"]
        self.ckpt_file = path

    # -- pieces ------------------------------------------------------------------------------
    def _batches(self):
        """Micro-batches of this rank: grad_accum per step, from the global (seed, step) data order."""
        tc, env = self.cfg.train, self.dist
        steps = StepBatchSampler(
            len(self.dataset), tc.batch_size, tc.seed, self.step, env.rank, env.world_size
        )
        # An own generator: the default one would draw from the global RNG and break exact resume.
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_MicroBatchSampler(steps, tc.grad_accum),
            collate_fn=collate,
            num_workers=tc.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(tc.seed + self.step + 7919 * env.rank),
        )
        return iter(loader)

    def _sync_ema(self) -> None:
        """Under FSDP, gather the EMA shards into `self.ema` (collective); a no-op otherwise."""
        if self._sharded_ema is not None:
            self._sharded_ema.gather_into(self.ema, buffers_from=self.model)

    def _save(self, loss: float) -> None:
        """Checkpoint (collective): rank 0 writes the single file, then all ranks wait for it.

        Weights, EMA and optimizer state are checked first: a non-finite value raises
        TrainingDivergedError on every rank and nothing is written, so last.safetensors (and
        prev.safetensors, the one before it) always hold a run that can continue.
        """
        tc, env = self.cfg.train, self.dist
        layout = dict(world_size=env.world_size, grad_accum=tc.grad_accum)
        after = self._loss_after_update()
        if not math.isfinite(
            after
        ):  # finite but exploded weights (e.g. ~1e30) pass the value check below
            raise TrainingDivergedError(
                self._nonfinite_msg(f"the loss of the updated weights is {after}")
            )
        model_sd, optim_sd = {}, {}
        if self.fsdp:
            model_sd, optim_sd = D.gather_fsdp_state(self._root, self.optimizer)
            self._sync_ema()
        elif env.is_main:
            model_sd, optim_sd = self.model.state_dict(), self.optimizer.state_dict()
        ema_sd = self.ema.state_dict() if env.is_main else {}
        bad = nonfinite_report(model_sd, ema_sd, optim_sd) if env.is_main else ""
        _, any_bad = D.all_agree(bool(bad), env)
        if any_bad:
            raise TrainingDivergedError(
                self._nonfinite_msg(
                    f"{bad or 'non-finite values'} in the weights, EMA or optimizer state"
                )
            )
        if env.is_main:
            write_checkpoint(
                self.ckpt_path,
                model_state=model_sd,
                ema_state=ema_sd,
                optimizer_state=optim_sd,
                step=self.step,
                config=self.cfg,
                extra={"loss": loss},
                previous=self.prev_path,
                **layout,
            )
        D.barrier(env)
        self.ckpt_step, self.ckpt_file = self.step, self.ckpt_path

    @torch.no_grad()
    def _loss_after_update(self) -> float:
        """Loss of the current weights on the last micro-batch (collective), 0.0 before any step.

        Runs under `fork_rng`, so the training RNG stream, and with it exact resume, is untouched.
        """
        if self._last_batch is None:
            return 0.0
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), self.precision.autocast(self.device.type):
            loss = self._root(self._last_batch)["loss"].float().detach()
        return D.all_reduce_mean(loss, self.dist).item()

    def _trim_log(self) -> None:
        """Drop log rows past the resumed step (written after the last checkpoint of a crashed run) and
        rows cut short by a kill; the file is rewritten atomically, so a kill now leaves the old one."""
        path = self.run_dir / "log.csv"
        if not path.exists():
            return
        text = path.read_text(errors="replace")
        reader = csv.DictReader(io.StringIO(text))
        fields = reader.fieldnames or []
        if "step" not in fields:  # empty, or no header: nothing in it can be trusted
            if text.strip():
                os.replace(path, path.with_name("log.csv.unreadable"))
                self._note(
                    f"{path} had no header; moved it to log.csv.unreadable and started a new log"
                )
            else:
                path.unlink()
            return
        rows = list(reader)
        if rows and not text.endswith("\n"):
            rows.pop()  # the last line was cut by a kill mid-append
        keep = [
            r
            for r in rows
            if None not in r
            and None not in r.values()
            and r["step"].isdigit()
            and int(r["step"]) <= self.step
        ]
        if len(keep) == len(rows) and text.endswith("\n"):
            return
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=fields)
        w.writeheader()
        w.writerows(keep)
        atomic_write_text(path, out.getvalue())

    def _log(self, row: dict) -> None:
        path = self.run_dir / "log.csv"
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self._tb is not None:
            self._tb.log(row)

    @torch.no_grad()
    def sample_grid(self, path, per_class: int = 8) -> Path:
        """A PNG of EMA samples, one row per class, from the fixed seed in cfg.sample."""
        s, n = self.cfg.sample, self.cfg.data.num_classes
        # At most 16 rows (evenly spaced classes): ImageNet's 1000 classes would take 8000 samples.
        classes = torch.arange(n) if n <= 16 else torch.linspace(0, n - 1, 16).round().long()
        labels = classes.repeat_interleave(per_class)
        out = self.ema.sample(
            labels,
            guidance_scale=s.cfg,
            cfg_schedule=s.cfg_schedule,
            temperature=s.temperature,
            num_steps=s.num_steps,
            generator=torch.Generator().manual_seed(s.seed),
        )
        images = torch.cat([self.tokenizer.decode(t).clamp(-1, 1) for t in out.tokens.split(64)])
        return save_grid(
            images, path, nrow=per_class, scale=2 if self.cfg.data.image_size <= 64 else 1
        )

    @torch.no_grad()
    def _tokens(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) -> tokens via the tokenizer; float (B, L, C) batches already are tokens
        (e.g. `data.latents.CachedLatentDataset`, whose (z - shift) * scale follows the tokenizer config)."""
        batch = batch.to(self.device, non_blocking=True)
        if batch.ndim == 3 and batch.is_floating_point():
            return batch
        return self.tokenizer.encode(to_float(batch))

    def _step(self, fetch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over grad_accum micro-batches `fetch(0..grad_accum-1)` of this rank.

        Before each micro-batch the global RNG is seeded from (seed, step, rank * grad_accum + j), so
        fetching (random datasets), encoding and the loss draw the same numbers for the same global
        micro-batch whatever the number of processes.
        """
        tc, env = self.cfg.train, self.dist
        accum = tc.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        keys, total = None, None
        for j in range(accum):
            torch.manual_seed(D.micro_batch_seed(tc.seed, self.step, env.rank * accum + j))
            images, labels = fetch(j)
            with D.grad_sync(self._train_module, j == accum - 1):
                tokens_BLC = self._tokens(images)
                batch = {"tokens": tokens_BLC, "labels": labels.to(self.device)}
                with self.precision.autocast(self.device.type):
                    out = self._train_module(batch)
                loss = out["loss"].float()
                if not env.enabled and not torch.isfinite(
                    loss
                ):  # distributed: checked on the reduced loss below
                    raise TrainingDivergedError(self._diverged_msg("loss", loss.item()))
                (loss / accum).backward()
            keys = keys or [k for k in out if k != "loss"]
            vals = torch.stack([loss.detach()] + [out[k].detach().float() for k in keys])
            total = vals if total is None else total + vals
        stats = D.all_reduce_mean(
            total / accum, env
        ).tolist()  # mean over all micro-batches of all ranks
        if not math.isfinite(stats[0]):
            raise TrainingDivergedError(self._diverged_msg("loss", stats[0]))
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        gnorm = D.full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not torch.isfinite(gnorm):
            raise TrainingDivergedError(self._diverged_msg("gradient norm", gnorm.item()))
        lr = lr_at(self.step, tc)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        try:
            self.optimizer.step()
        except (
            RuntimeError
        ) as e:  # e.g. lr / bias correction beyond float range: a divergence, not a bug
            if "overflow" not in str(e):
                raise
            self.step += (
                1  # the weights are already partly updated: report it as this step's divergence
            )
            raise TrainingDivergedError(
                self._nonfinite_msg(f"the optimizer step overflowed: {e}")
            ) from e
        if self._sharded_ema is not None:
            self._sharded_ema.update(self.step, tc.ema_decay)
        else:
            update_ema(self.ema, self.model, self.step, tc.ema_decay)
        self.step += 1
        self._last_batch = batch  # for the health check of the updated weights before a checkpoint
        return {"loss": stats[0], **dict(zip(keys, stats[1:])), "lr": lr, "grad_norm": gnorm.item()}

    def _last_good(self) -> str:
        if (
            self.ckpt_step is not None
        ):  # every checkpoint written or resumed was checked to be finite
            return f"the last good checkpoint {self.ckpt_file} (step {self.ckpt_step}) is intact and finite"
        return "no checkpoint of this run was written yet"

    def _diverged_msg(self, what: str, value: float) -> str:
        hint = ""
        if (
            self.step == self.ckpt_step
            and self.ckpt_file == self.ckpt_path
            and self.prev_path.exists()
        ):
            # The first step after the checkpoint fails: its weights may be the problem (e.g. written
            # by a version without the health check), and the previous checkpoint is a way back.
            hint = (
                f" The first step after that checkpoint fails, so its weights may be diverged; to restart from "
                f"the previous checkpoint, move {self.prev_path} over {self.ckpt_path}."
            )
        return (
            f"{what} is {value} at step {self.step + 1}: training stopped before the update; {self._last_good()}."
            f"{hint} Check the data, or try a lower --train.lr, --train.precision=fp32 or a smaller "
            f"--train.grad_clip."
        )

    def _nonfinite_msg(self, detail: str) -> str:
        then = "to continue from it" if self.ckpt_step is not None else "to start again"
        return (
            f"the weights diverged by step {self.step} ({detail}); no checkpoint was written; {self._last_good()}. "
            f"Rerun with a lower --train.lr (or a smaller --train.grad_clip) {then}."
        )

    # -- loop --------------------------------------------------------------------------------
    def fit(self, max_steps: Optional[int] = None) -> TrainResult:
        """Train to cfg.train.steps (or stop early at global step `max_steps`, checkpointing there).

        Under torchrun every rank calls it; all return the same TrainResult (rank 0 wrote the files).
        The run directory stays locked until it returns or raises.
        """
        self._acquire_lock()
        try:
            return self._fit(max_steps)
        finally:
            self.close()

    def _fit(self, max_steps: Optional[int]) -> TrainResult:
        tc, env = self.cfg.train, self.dist
        end = tc.steps if max_steps is None else min(tc.steps, max_steps)
        start_step, t0 = self.step, time.perf_counter()
        busy, last = 0.0, {"loss": float("nan")}
        self.model.train()
        bar = tqdm(
            total=tc.steps,
            initial=self.step,
            disable=not (self.progress and env.is_main),
            dynamic_ncols=True,
            desc="train",
        )
        try:
            batches = self._batches() if self.step < end else None
            while self.step < end:
                ts = time.perf_counter()
                last = self._step(lambda j: next(batches))
                busy += time.perf_counter() - ts
                ips = (self.step - start_step) * tc.batch_size / max(busy, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{ips:.0f}")
                if env.is_main and (
                    (tc.log_every and self.step % tc.log_every == 0) or self.step == end
                ):
                    self._log(
                        {
                            "step": self.step,
                            **{k: round(v, 6) for k, v in last.items()},
                            "images_per_sec": round(ips, 1),
                            "elapsed_s": round(time.perf_counter() - t0, 1),
                        }
                    )
                if tc.sample_every and self.step % tc.sample_every == 0:
                    self._sync_ema()
                    if env.is_main:
                        self.sample_grid(self.run_dir / "samples" / f"step_{self.step:06d}.png")
                if (tc.ckpt_every and self.step % tc.ckpt_every == 0) or self.step == end:
                    self._save(last["loss"])
        finally:
            bar.close()
        D.barrier(env)
        if (
            not self.ckpt_path.exists()
        ):  # nothing to do (step >= end) on a fresh, resume=False run dir
            self._save(last["loss"])
        self._sync_ema()
        if env.is_main:
            save_pretrained(self.run_dir / "model", self.ema, self.cfg)
        D.barrier(env)
        if self.step == start_step:  # nothing to do this time: report the loss the run ended with
            last["loss"] = (last_logged_loss(self.run_dir) or (self.step, float("nan")))[1]
        return TrainResult(
            steps=self.step,
            final_loss=last["loss"],
            seconds=time.perf_counter() - t0,
            images_per_sec=(self.step - start_step) * tc.batch_size / busy if busy else 0.0,
            run_dir=self.run_dir,
            checkpoint=self.ckpt_path,
            precision=self.precision.name,
        )
