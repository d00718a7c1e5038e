"""What may change when a run is resumed, and the record of what did (docs/design.md, "Resume").

`check_config` (nestar/serialization.py) refuses any change to the network-defining sections
(model_type, model, tokenizer, data). This module covers the rest of the run config:

- exempt fields change freely and are not recorded: they do not touch the weights (logging,
  sampling, checkpoint cadence, data-loader workers, device, compile / activation checkpointing,
  the world-size permission flag, the preset label) or are the record itself (`history`);
- `train.steps` may change without a flag (continuing a run longer is the common wish) but is
  recorded, with a notice of what it does to a cosine LR schedule; so is `train.parallel` (DDP and
  FSDP2 compute the same updates; a DDP checkpoint continues under FSDP);
- every other field (lr, schedule, batch size, precision, seed, EMA decay, ..., and the model's
  training-only fields such as NestAR's rollout objective: `TRAINING_ONLY` on its config) stops the resume
  with a list of `field: old -> new`, unless the caller passes `allow=True`
  (`nestar train --allow-config-change`); then the change is recorded.

The record is `RunConfig.history`: a list of {"step": S, "changes": {field: [old, new]}}, kept in
config.json and in every checkpoint, so a run directory always says how its weights were made.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

EXEMPT_FIELDS = frozenset(
    {
        "preset",
        "history",
        "train.log_every",
        "train.sample_every",
        "train.ckpt_every",
        "train.num_workers",
        "train.device",
        "train.compile",
        "train.activation_checkpointing",
        "train.allow_world_size_change",
    }
)
EXEMPT_SECTIONS = ("sample.",)  # sampling defaults: used for grids and Pipeline, never for updates
FREE_FIELDS = frozenset({"train.steps", "train.parallel"})  # change without a flag, but recorded


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict, now: dict, skip_prefixes: tuple[str, ...] = ()) -> dict[str, list]:
    """{field: [old, new]} of every non-exempt field that differs (both dicts as config_to_dict writes them)."""
    a, b = flatten(saved), flatten(now)
    changes = {}
    for key in sorted(set(a) | set(b)):
        if key in EXEMPT_FIELDS or key.startswith(EXEMPT_SECTIONS + skip_prefixes):
            continue
        old, new = a.get(key, "<missing>"), b.get(key, "<missing>")
        if old != new:
            changes[key] = [old, new]
    return changes


def _fmt(value: Any) -> str:
    return repr(tuple(value)) if isinstance(value, list) else repr(value)


def reconcile_resume(
    cfg, info: Optional[dict], path, *, world_size: int = 1, allow: bool = False
) -> list[str]:
    """Check `cfg` against the checkpoint header `info` (None: a fresh run) and set `cfg.history`.

    Returns notices to print. Raises CheckpointError listing each blocked change (nothing written).
    """
    from nestar.registry import config_to_dict, load_run_config
    from nestar.serialization import MATCHED_SECTIONS, CheckpointError

    if (
        info is None
    ):  # a fresh run: a history copied in with --config describes another run's weights
        notices = (
            ["the history in this config belongs to another run and is dropped"]
            if cfg.history
            else []
        )
        cfg.history = []
        return notices
    saved = config_to_dict(
        load_run_config(info["config"])
    )  # fields added since then take their defaults
    skip = tuple(
        s if s == "model_type" else s + "." for s in MATCHED_SECTIONS
    )  # check_config's business
    if info.get("world_size", 1) != world_size:
        skip += ("train.grad_accum",)  # another layout: distributed.check_world_size decides
    now = config_to_dict(cfg)
    changes = config_changes(saved, now, skip)
    for f in getattr(type(cfg.model), "TRAINING_ONLY", ()):  # not the network: like train.*
        if saved["model"].get(f) != now["model"].get(f):
            changes[f"model.{f}"] = [saved["model"].get(f), now["model"].get(f)]
    step = info["step"]
    if cfg.train.steps < step:
        raise CheckpointError(
            f"checkpoint {path} is at step {step}, beyond --train.steps={cfg.train.steps}: "
            f"pass --train.steps={saved['train']['steps']} (or more) to resume it"
        )
    blocked = {k: v for k, v in changes.items() if k not in FREE_FIELDS}
    if blocked and not allow:
        lines = "\n".join(f"  {k}: {_fmt(old)} -> {_fmt(new)}" for k, (old, new) in blocked.items())
        keep = " ".join(f"--{k}={_fmt(old)}" for k, (old, _) in blocked.items())
        raise CheckpointError(
            f"checkpoint {path} (step {step}) was trained with other settings; resuming would change:\n{lines}\n"
            f"Nothing was changed. To continue as it was trained, pass {keep} (or --config with the run's "
            f"config.json); to continue with the new settings, pass --allow-config-change (recorded in "
            f"config.json under 'history')."
        )
    cfg.history = list(saved.get("history") or [])
    if changes:
        cfg.history.append({"step": step, "changes": changes})
    return [_steps_notice(saved["train"], cfg.train, step)] if "train.steps" in changes else []


def _steps_notice(old_train: dict, new_train, step: int) -> str:
    """What raising (or lowering) train.steps does from `step` on."""
    from nestar.registry import TrainConfig
    from nestar.training.lr import lr_at

    old = TrainConfig(**{**old_train, "betas": tuple(old_train["betas"])})
    msg = f"train.steps {old.steps} -> {new_train.steps}: continuing from step {step}"
    if new_train.lr_schedule == "cosine":
        msg += (
            f"; the cosine LR now follows the {new_train.steps}-step schedule "
            f"({lr_at(step, old):.3g} -> {lr_at(step, new_train):.3g} at step {step})"
        )
    return msg + " (recorded in config.json under 'history')"


def last_logged_loss(run_dir) -> Optional[tuple[int, float]]:
    """(step, loss) of the last row of RUN_DIR/log.csv with a loss, or None."""
    path = Path(run_dir) / "log.csv"
    if not path.is_file():
        return None
    last = None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                last = (int(row["step"]), float(row["loss"]))
            except (KeyError, TypeError, ValueError):
                continue
    return last
