"""Checkpoints: one safetensors file per checkpoint, JSON config in its metadata, atomic writes.

Nothing is ever unpickled. A checkpoint holds `model.*` and `ema.*` weights, the AdamW state
(`optim.<param index>.<name>`), the torch RNG state, and in its metadata the resolved run config,
the step, the optimiser's param groups, the data-parallel layout (`world_size`, `grad_accum`) and
free-form `extra` JSON. A distributed run writes the same single file from rank 0 (FSDP state is
gathered first, see training/distributed.py); checkpoints without a layout read as 1 process.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from nestar.config import diff_configs, save_json
from nestar.utils.io import atomic_write

FORMAT_VERSION = "1"
# Sections that define the network and its inputs; train/sample settings may change on resume.
MATCHED_SECTIONS = ("model_type", "model", "tokenizer", "data")


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, or does not match the model/config it is loaded into."""


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def save_checkpoint(path, *, model: nn.Module, ema: Optional[nn.Module], optimizer: Optional[torch.optim.Optimizer],
                    step: int, config, extra: Optional[dict] = None, world_size: int = 1, grad_accum: int = 1) -> Path:
    """Write a full training checkpoint atomically (temp file + fsync + rename).

    A crash mid-write leaves the previous file at `path` untouched, so a run can always resume.
    """
    return write_checkpoint(path, model_state=model.state_dict(), ema_state=ema.state_dict() if ema is not None else None,
                            optimizer_state=optimizer.state_dict() if optimizer is not None else None, step=step,
                            config=config, extra=extra, world_size=world_size, grad_accum=grad_accum)


def write_checkpoint(path, *, model_state: dict, ema_state: Optional[dict], optimizer_state: Optional[dict], step: int,
                     config, extra: Optional[dict] = None, world_size: int = 1, grad_accum: int = 1) -> Path:
    """`save_checkpoint` from state dicts (e.g. full state dicts gathered from FSDP shards on rank 0).

    `optimizer_state` is index-based, as `torch.optim.Optimizer.state_dict()` returns it.
    """
    from nestar.registry import config_to_dict

    tensors = {f"model.{k}": _cpu(v) for k, v in model_state.items()}
    if ema_state is not None:
        tensors.update({f"ema.{k}": _cpu(v) for k, v in ema_state.items()})
    groups = []
    if optimizer_state is not None:
        for idx, state in optimizer_state["state"].items():
            for name, value in state.items():
                tensors[f"optim.{idx}.{name}"] = _cpu(torch.as_tensor(value))
        groups = optimizer_state["param_groups"]
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # the loss draws noise on the GPU
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {
        "format": FORMAT_VERSION,
        "config": json.dumps(config_to_dict(config)),
        "step": str(step),
        "param_groups": json.dumps(groups),
        "extra": json.dumps(extra or {}),
        "world_size": str(world_size),
        "grad_accum": str(grad_accum),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return Path(path)


def _read(path) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers/short files
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from e
    if meta.get("format") != FORMAT_VERSION or "config" not in meta:
        raise CheckpointError(f"{path} is not a nestar checkpoint (format {meta.get('format')!r}, expected {FORMAT_VERSION})")
    return meta, tensors


def _open(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from e


def _info(meta: dict) -> dict:
    return {"step": int(meta["step"]), "extra": json.loads(meta["extra"]), "config": json.loads(meta["config"]),
            "world_size": int(meta.get("world_size", 1)), "grad_accum": int(meta.get("grad_accum", 1))}


def read_checkpoint_info(path) -> dict:
    """{'step', 'extra', 'config', 'world_size', 'grad_accum'} from the header only (no tensor is read)."""
    with _open(path) as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT_VERSION or "config" not in meta:
        raise CheckpointError(f"{path} is not a nestar checkpoint (format {meta.get('format')!r}, expected {FORMAT_VERSION})")
    return _info(meta)


def read_optimizer_state(path) -> dict:
    """The index-based optimizer state dict stored in a checkpoint ({'state', 'param_groups'}), CPU tensors."""
    read_checkpoint_info(path)  # validates the format
    try:
        with _open(path) as f:
            meta = f.metadata()
            state: dict = {}
            for k in f.keys():
                if k.startswith("optim."):
                    _, idx, name = k.split(".", 2)
                    state.setdefault(int(idx), {})[name] = f.get_tensor(k)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from e
    return {"state": state, "param_groups": json.loads(meta["param_groups"])}


def read_checkpoint_config(path) -> dict:
    """The resolved run config stored in a checkpoint."""
    return json.loads(_read(path)[0]["config"])


def check_config(path, saved: dict, config) -> None:
    """Raise CheckpointError listing each network-defining field that differs.

    The saved config is first read through today's dataclasses, so fields added since it was written
    take their defaults (a checkpoint from before `head.kind` existed still matches `kind='mlp'`).
    """
    from nestar.config import ConfigError
    from nestar.registry import config_to_dict, load_run_config

    now = config_to_dict(config)
    try:
        saved = config_to_dict(load_run_config(saved))
    except (ConfigError, TypeError, ValueError):
        pass  # unreadable today: compare the raw values, which names the fields that differ
    diffs = diff_configs({k: saved.get(k) for k in MATCHED_SECTIONS}, {k: now.get(k) for k in MATCHED_SECTIONS})
    if diffs:
        raise CheckpointError(f"checkpoint {path} does not match the config: " + "; ".join(diffs)
                              + " (checkpoint value != config value)")


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path) -> None:
    """Load `prefix.*` tensors into module, naming missing/unexpected keys and shape mismatches."""
    sd = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} ({prefix} weights) does not fit the model: "
                              f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"checkpoint {path} has mismatched shapes: " + "; ".join(bad[:8]))
    module.load_state_dict(sd)


def load_checkpoint(path, *, model: nn.Module, ema: Optional[nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, config=None, restore_rng: bool = False) -> dict:
    """Load a checkpoint into the given objects; with `config`, refuse one that does not match."""
    meta, tensors = _read(path)
    saved = json.loads(meta["config"])
    if config is not None:
        check_config(path, saved, config)
    load_weights(model, tensors, "model", path)
    if ema is not None:
        load_weights(ema, tensors, "ema", path)
    if optimizer is not None:
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        try:
            optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        except (ValueError, KeyError) as e:  # torch raises ValueError for group/size mismatches
            raise CheckpointError(f"checkpoint {path}: optimizer state does not fit ({e})") from e
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    return _info(meta)


def save_pretrained(directory, model: nn.Module, config) -> Path:
    """Export weights for inference: `model.safetensors` + `config.json` (the resolved run config)."""
    from nestar.registry import config_to_dict

    directory = Path(directory)
    tensors = {k: _cpu(v) for k, v in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pretrained"}))
    save_json(config_to_dict(config), directory / "config.json")
    return directory


def load_pretrained(directory):
    """(model, RunConfig) from a `save_pretrained` directory."""
    from nestar.registry import RunConfig, build_model

    directory = Path(directory)
    cfg_path, w_path = directory / "config.json", directory / "model.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(f"{directory} is not a saved model (expected config.json and model.safetensors)")
    try:
        config = RunConfig.from_dict(json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, ValueError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"{cfg_path} is not a valid run config: {e}") from e
    model = build_model(config)
    try:
        with safe_open(str(w_path), framework="pt") as f:
            tensors = {f"model.{k}": f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{w_path} is truncated or corrupt ({type(e).__name__}: {e})") from e
    load_weights(model, tensors, "model", w_path)
    return model, config


def load_model_from_checkpoint(path, use_ema: bool = True):
    """(model, RunConfig) from a training checkpoint, EMA weights by default."""
    from nestar.registry import RunConfig, build_model

    meta, tensors = _read(path)
    config = RunConfig.from_dict(json.loads(meta["config"]))
    model = build_model(config)
    prefix = "ema" if use_ema and any(k.startswith("ema.") for k in tensors) else "model"
    load_weights(model, tensors, prefix, path)
    return model, config
