"""Export a finished run as a pretrained model that ships with the package (nestar/pretrained.py).

`export_pretrained(run_dir, name)` writes `<root>/<name>/`:
- `model.safetensors`: the EMA weights of `run_dir/checkpoints/last.safetensors` (float32);
- `config.json`: the run's resolved config (with its resume history), as `save_pretrained` writes it;
- `metrics.json`: provenance (step, last loss from log.csv, parameters, sequential steps, precision,
  SHA-256 and size of the weights, torch version) and, under "evaluation", the run's
  `demo_results.json` / `metrics.json` (`nestar demo` / `nestar eval --out RUN_DIR/metrics.json`)
  or the JSON files passed as `metrics`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

from nestar.config import save_json
from nestar import pretrained
from nestar.serialization import (
    CheckpointError,
    load_model_from_checkpoint,
    read_checkpoint_info,
    save_pretrained,
)
from nestar.training.resume import last_logged_loss

MAX_MB = 50  # a shipped model stays small: the package is installed with it
EVALUATION_FILES = ("demo_results.json", "metrics.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_pretrained(
    run_dir,
    name: str,
    root: Optional[Path] = None,
    *,
    metrics: Sequence[str] = (),
    allow_unfinished: bool = False,
    overwrite: bool = False,
) -> Path:
    """Copy a finished run's EMA weights, config and metrics to `root/name` (default: the package's)."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.safetensors"
    info = read_checkpoint_info(ckpt)
    steps = info["config"]["train"]["steps"]
    if info["step"] < steps and not allow_unfinished:
        raise CheckpointError(
            f"{run_dir} stopped at step {info['step']} of {steps}: finish it first "
            f"(or pass allow_unfinished / --allow-unfinished)"
        )
    dest = Path(pretrained.PRETRAINED_DIR if root is None else root) / name
    if any((dest / f).exists() for f in pretrained.FILES) and not overwrite:
        raise FileExistsError(
            f"{dest} already holds a model; pass overwrite / --overwrite to replace it"
        )
    model, config = load_model_from_checkpoint(ckpt, use_ema=True)
    save_pretrained(dest, model, config)
    weights = dest / "model.safetensors"
    size_mb = weights.stat().st_size / 2**20
    if size_mb > MAX_MB:
        weights.unlink()
        raise ValueError(
            f"{name}: {size_mb:.1f} MB of weights is over the {MAX_MB} MB a shipped model may take"
        )
    save_json(_metrics(run_dir, name, info, model, weights, metrics), dest / "metrics.json")
    return dest


def _metrics(
    run_dir: Path, name: str, info: dict, model, weights: Path, extra: Sequence[str]
) -> dict:
    import torch

    logged = last_logged_loss(run_dir)
    evaluation = {}
    for path in [
        *(run_dir / f for f in EVALUATION_FILES if (run_dir / f).is_file()),
        *map(Path, extra),
    ]:
        evaluation[path.name] = json.loads(path.read_text())
    cfg = info["config"]
    return {
        "name": name,
        "preset": cfg.get("preset", ""),
        "model_type": cfg.get("model_type", "nestar"),
        "weights": "EMA",
        "step": info["step"],
        "train_steps": cfg["train"]["steps"],
        "train_precision": cfg["train"].get("precision"),
        "last_loss": logged[1] if logged else info["extra"].get("loss"),
        "params_M": round(model.num_params() / 1e6, 3),
        "sequential_steps": model.sequential_steps(),
        "sha256": _sha256(weights),
        "size_bytes": weights.stat().st_size,
        "torch_version": torch.__version__,
        "exported_from": run_dir.name,
        "evaluation": evaluation,
    }
