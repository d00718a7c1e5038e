"""Serialization: training checkpoints and saved models, one safetensors file each, JSON config in its metadata.

Checkpoints are written atomically.

Nothing is ever unpickled. A checkpoint holds `model.*` and `ema.*` weights, the AdamW state
(`optim.<param index>.<name>`), the torch RNG state, and in its metadata the resolved run config,
the step, the optimiser's param groups, the data-parallel layout (`world_size`, `grad_accum`) and
free-form `extra` JSON. A distributed run writes the same single file from rank 0 (FSDP state is
gathered first, see training/distributed.py); checkpoints without a layout read as 1 process.

Loading a model for inference (`load_pretrained`, `load_model_from_checkpoint`) skips the random
initialisation that the weights would overwrite: the model is built with its parameters on the meta
device (`parameters_on_meta`) and the checkpoint tensors are assigned in their place. Buffers and
plain tensors made in `__init__` (generation orders, masks) are built for real, as always. Resuming
a run (`load_checkpoint`) loads into a fully built model.
"""

from __future__ import annotations

import json
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from nestar.config import diff_configs, save_json
from nestar.errors import UserError
from nestar.utils.io import atomic_write

FORMAT_VERSION = "1"
# Sections that define the network and its inputs; train/sample settings may change on resume.
MATCHED_SECTIONS = ("model_type", "model", "tokenizer", "data")


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not match the model/config it is loaded into."""


class CheckpointCorruptError(CheckpointError):
    """The file itself is unusable (truncated, not a nestar checkpoint, bad metadata, non-finite values);
    a resume falls back to the previous checkpoint on this error, never on a config mismatch."""


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def count_nonfinite(tensors) -> int:
    """NaN/inf entries over the floating-point tensors of an iterable."""
    return sum(
        int((~torch.isfinite(t)).sum())
        for t in tensors
        if torch.is_tensor(t) and t.is_floating_point()
    )


def nonfinite_report(
    model_state: dict, ema_state: Optional[dict], optimizer_state: Optional[dict]
) -> str:
    """'' when every value is finite, else e.g. 'model 62608, ema 62608 non-finite values'."""
    parts = {
        "model": count_nonfinite(model_state.values()),
        "ema": count_nonfinite(ema_state.values()) if ema_state else 0,
        "optimizer": count_nonfinite(
            v for st in (optimizer_state or {}).get("state", {}).values() for v in st.values()
        ),
    }
    bad = {k: v for k, v in parts.items() if v}
    return ", ".join(f"{k} {v}" for k, v in bad.items()) + " non-finite values" if bad else ""


def save_checkpoint(
    path,
    *,
    model: nn.Module,
    ema: Optional[nn.Module],
    optimizer: Optional[torch.optim.Optimizer],
    step: int,
    config,
    extra: Optional[dict] = None,
    world_size: int = 1,
    grad_accum: int = 1,
    previous=None,
) -> Path:
    """Write a full training checkpoint atomically (temp file + fsync + rename).

    A crash mid-write leaves the previous file at `path` untouched, so a run can always resume.
    `previous`: keep the checkpoint being replaced under this path (e.g. prev.safetensors).
    """
    return write_checkpoint(
        path,
        model_state=model.state_dict(),
        ema_state=ema.state_dict() if ema is not None else None,
        optimizer_state=optimizer.state_dict() if optimizer is not None else None,
        step=step,
        config=config,
        extra=extra,
        world_size=world_size,
        grad_accum=grad_accum,
        previous=previous,
    )


def write_checkpoint(
    path,
    *,
    model_state: dict,
    ema_state: Optional[dict],
    optimizer_state: Optional[dict],
    step: int,
    config,
    extra: Optional[dict] = None,
    world_size: int = 1,
    grad_accum: int = 1,
    previous=None,
) -> Path:
    """`save_checkpoint` from state dicts (e.g. full state dicts gathered from FSDP shards on rank 0).

    `optimizer_state` is index-based, as `torch.optim.Optimizer.state_dict()` returns it. Refuses
    (CheckpointError, nothing written) when any weight, EMA or optimizer value is NaN/inf: a poisoned
    file must never replace a good one.
    """
    from nestar.registry import config_to_dict

    bad = nonfinite_report(model_state, ema_state, optimizer_state)
    if bad:
        raise CheckpointError(f"refusing to write checkpoint {path} at step {step}: {bad}")

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
        "optim_tensors": str(
            sum(k.startswith("optim.") for k in tensors)
        ),  # a lost entry is then detected
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), previous=previous)
    return Path(path)


def _read(
    path, select: Optional[Callable[[list[str]], list[str]]] = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors); `select` maps the file's keys to the keys to read (default: all)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in (select(keys) if select is not None else keys)}
    except Exception as e:  # safetensors raises its own error types for bad headers/short files
        raise CheckpointCorruptError(
            f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})"
        ) from e
    if meta.get("format") != FORMAT_VERSION or "config" not in meta:
        raise CheckpointCorruptError(
            f"{path} is not a nestar checkpoint (format {meta.get('format')!r}, "
            f"expected {FORMAT_VERSION})"
        )
    _check_finite(path, tensors)
    return meta, tensors


def _check_finite(path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse weights or optimizer state holding NaN/inf (a diverged run's file): sampling from it or
    resuming it would only spread the damage."""
    groups: dict[str, int] = {}
    for k, t in tensors.items():
        if not k.startswith("rng."):
            groups[k.split(".", 1)[0]] = groups.get(k.split(".", 1)[0], 0) + count_nonfinite([t])
    bad = {g: n for g, n in groups.items() if n}
    if bad:
        raise CheckpointCorruptError(
            f"checkpoint {path} holds non-finite values ("
            + ", ".join(f"{g} {n}" for g, n in bad.items())
            + " NaN/inf); it comes from a diverged run and cannot be used"
        )


def _open(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:
        raise CheckpointCorruptError(
            f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})"
        ) from e


def _info(meta: dict, path=None) -> dict:
    """The checkpoint's header fields, validated: a bad value is a CheckpointCorruptError naming it."""
    out: dict = {}
    for key, parse, default in (
        ("step", int, None),
        ("world_size", int, "1"),
        ("grad_accum", int, "1"),
        ("extra", json.loads, "{}"),
        ("config", json.loads, None),
    ):
        raw = meta.get(key, default)
        try:
            out[key] = parse(raw)
        except (TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise CheckpointCorruptError(
                f"checkpoint {path}: metadata field {key!r} is not valid ({raw!r:.60})"
            ) from e
    if out["step"] < 0 or out["world_size"] < 1 or out["grad_accum"] < 1:
        raise CheckpointCorruptError(
            f"checkpoint {path}: metadata step/world_size/grad_accum out of range "
            f"({out['step']}, {out['world_size']}, {out['grad_accum']})"
        )
    if not isinstance(out["config"], dict):
        raise CheckpointCorruptError(f"checkpoint {path}: the embedded config is not a JSON object")
    return out


def read_checkpoint_info(path) -> dict:
    """{'step', 'extra', 'config', 'world_size', 'grad_accum'} from the header only (no tensor is read)."""
    with _open(path) as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT_VERSION or "config" not in meta:
        raise CheckpointCorruptError(
            f"{path} is not a nestar checkpoint (format {meta.get('format')!r}, "
            f"expected {FORMAT_VERSION})"
        )
    return _info(meta, path)


def read_optimizer_state(path) -> dict:
    """The index-based optimizer state dict stored in a checkpoint ({'state', 'param_groups'}), CPU tensors."""
    read_checkpoint_info(path)  # validates the format and header
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
        raise CheckpointCorruptError(
            f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})"
        ) from e
    _check_finite(path, {f"optim.{i}.{k}": v for i, st in state.items() for k, v in st.items()})
    full = {"state": state, "param_groups": _param_groups(meta, path)}
    _check_optimizer_entries(path, meta, full)
    return full


def _param_groups(meta: dict, path) -> list:
    try:
        groups = json.loads(meta.get("param_groups", "[]"))
    except ValueError as e:
        raise CheckpointCorruptError(
            f"checkpoint {path}: metadata field 'param_groups' is not valid JSON"
        ) from e
    if not isinstance(groups, list):
        raise CheckpointCorruptError(
            f"checkpoint {path}: metadata field 'param_groups' is not a list"
        )
    return groups


def _check_optimizer_entries(path, meta: dict, full: dict) -> None:
    """A resume from partial optimizer state would silently not be exact: every entry must be there."""
    n = sum(len(st) for st in full["state"].values())
    want = meta.get("optim_tensors")
    names = {frozenset(st) for st in full["state"].values()}
    if (want is not None and str(n) != want) or len(names) > 1:
        raise CheckpointCorruptError(
            f"checkpoint {path}: optimizer state is incomplete ({n} tensors, "
            f"{want or 'an equal set per parameter'} expected); resume from an intact "
            f"checkpoint (checkpoints/prev.safetensors) or start a new run"
        )


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
    diffs = diff_configs(
        {k: saved.get(k) for k in MATCHED_SECTIONS}, {k: now.get(k) for k in MATCHED_SECTIONS}
    )
    # training-only model fields (e.g. the rollout objective) are the resume check's business
    train_only = {f"model.{f}" for f in getattr(type(config.model), "TRAINING_ONLY", ())}
    diffs = [d for d in diffs if d.split(":")[0] not in train_only]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} does not match the config: "
            + "; ".join(diffs)
            + " (checkpoint value != config value)"
        )


def load_module_state(
    module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path, assign: bool = False
) -> None:
    """Load `prefix.*` tensors into module, naming missing/unexpected keys and shape mismatches.

    `assign`: put the checkpoint tensors in place of the module's (cast to the module's dtypes)
    instead of copying into them; needed when the module's parameters are on the meta device.
    """
    sd = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} ({prefix} weights) does not fit the model: "
            f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]}"
        )
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if v.shape != own[k].shape
    ]
    if bad:
        raise CheckpointError(f"checkpoint {path} has mismatched shapes: " + "; ".join(bad[:8]))
    if assign:  # copy_ would cast to the parameter's dtype: do the same
        sd = {k: v if v.dtype == own[k].dtype else v.to(own[k].dtype) for k, v in sd.items()}
    module.load_state_dict(sd, strict=True, assign=assign)


def load_checkpoint(
    path,
    *,
    model: nn.Module,
    ema: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    config=None,
    restore_rng: bool = False,
) -> dict:
    """Load a checkpoint into the given objects; with `config`, refuse one that does not match."""
    meta, tensors = _read(path)
    info = _info(meta, path)
    saved = info["config"]
    if config is not None:
        check_config(path, saved, config)
    load_module_state(model, tensors, "model", path)
    if ema is not None:
        load_module_state(ema, tensors, "ema", path)
    if optimizer is not None:
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        full = {"state": state, "param_groups": _param_groups(meta, path)}
        _check_optimizer_entries(path, meta, full)
        try:
            optimizer.load_state_dict(full)
        except (
            ValueError,
            KeyError,
            TypeError,
        ) as e:  # torch raises ValueError for group/size mismatches
            raise CheckpointError(f"checkpoint {path}: optimizer state does not fit ({e})") from e
    if restore_rng:
        if "rng.torch" not in tensors:
            raise CheckpointCorruptError(
                f"checkpoint {path} has no RNG state (rng.torch): an exact resume is impossible"
            )
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    return info


def save_pretrained(directory, model: nn.Module, config) -> Path:
    """Export weights for inference: `model.safetensors` + `config.json` (the resolved run config)."""
    from nestar.registry import config_to_dict

    directory = Path(directory)
    tensors = {k: _cpu(v) for k, v in model.state_dict().items()}
    atomic_write(
        directory / "model.safetensors",
        lambda tmp: save_file(tensors, tmp, metadata={"format": "pretrained"}),
    )
    save_json(config_to_dict(config), directory / "config.json")
    return directory


# ----- building models for loading, without random initialisation ---------------------------------
_meta_lock = threading.Lock()
_meta_state = threading.local()  # depth of parameters_on_meta() in this thread
_meta_users = 0  # threads inside parameters_on_meta(): the patch is installed while > 0
_orig_register_parameter = None


def _register_parameter(self: nn.Module, name: str, param) -> None:
    if getattr(_meta_state, "depth", 0) and param is not None and param.device.type != "meta":
        param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
    _orig_register_parameter(self, name, param)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built in this thread inside the block get their parameters on the meta device.

    A parameter is moved to meta as it is registered, so the initialisation that follows in
    `__init__` (nn.Linear's reset_parameters, trunc_normal_, ...) costs nothing and draws nothing
    from the global RNG. Buffers and plain tensors are untouched: non-persistent state computed
    in `__init__` (orders, masks, index tables) is real, exactly as in a normal build. Other
    threads building modules meanwhile are not affected.
    """
    global _meta_users, _orig_register_parameter
    with _meta_lock:
        if _meta_users == 0:
            _orig_register_parameter = nn.Module.register_parameter
            nn.Module.register_parameter = _register_parameter
        _meta_users += 1
    _meta_state.depth = getattr(_meta_state, "depth", 0) + 1
    try:
        yield
    finally:
        _meta_state.depth -= 1
        with _meta_lock:
            _meta_users -= 1
            if _meta_users == 0:
                nn.Module.register_parameter = _orig_register_parameter


def meta_tensors(module: nn.Module) -> list[str]:
    """Names of parameters, buffers and tensor attributes (also inside lists, dicts and plain
    objects held by a module, e.g. NestAR's generation order and plans) on the meta device."""
    found = [n for n, t in module.named_parameters(remove_duplicate=False) if t.is_meta]
    found += [n for n, t in module.named_buffers(remove_duplicate=False) if t.is_meta]
    seen: set[int] = set()

    def walk(obj, name: str, depth: int) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_meta:
                found.append(name)
            return
        if (
            depth > 4
            or id(obj) in seen
            or isinstance(obj, (nn.Module, str, bytes, int, float, bool, type(None)))
        ):
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            items = obj.items()
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = enumerate(obj)
        elif hasattr(obj, "__dict__") and not callable(obj):
            items = vars(obj).items()
        else:
            return
        for k, v in items:
            walk(v, f"{name}.{k}" if name else str(k), depth + 1)

    internal = {"_parameters", "_buffers", "_modules"}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for attr, value in vars(mod).items():
            if (
                attr not in internal
                and not attr.endswith("_hooks")
                and not attr.endswith("_hooks_with_kwargs")
            ):
                walk(value, f"{mod_name}.{attr}" if mod_name else attr, 0)
    return found


def build_model_from_tensors(
    config, tensors: dict[str, torch.Tensor], prefix: str, path, fast: bool = True
) -> nn.Module:
    """`build_model(config)` holding the `prefix.*` tensors, loaded with `load_module_state` semantics
    (CheckpointError naming missing/unexpected keys and mismatched shapes).

    `fast` builds the model with `parameters_on_meta` and assigns the tensors instead of initialising
    weights only to overwrite them; the result is the same module, with the same non-persistent
    state, as the slow way. A model that cannot be built this way (its `__init__` uses parameter
    values, or ties parameters, which assignment would untie) is built the slow way, with a warning.
    """
    from nestar.registry import build_model

    reason = None
    if fast:
        try:
            with parameters_on_meta():
                model = build_model(config)
        except Exception as e:  # noqa: BLE001 -- real config errors come back from the slow build below
            reason = f"building it with meta parameters failed ({type(e).__name__}: {e})"
        else:
            n_all = sum(1 for _ in model.named_parameters(remove_duplicate=False))
            if n_all != sum(1 for _ in model.named_parameters()):
                reason = "it shares parameters between modules"
            else:
                load_module_state(model, tensors, prefix, path, assign=True)
                left = meta_tensors(model)
                if not left:
                    return model
                reason = (
                    f"tensors built from parameters in __init__ stay on the meta device: {left[:8]}"
                )
    model = build_model(config)
    if reason is not None:
        warnings.warn(
            f"model_type {config.model_type!r} from {path}: fast loading is not possible ({reason}); "
            f"built with random initialisation instead",
            stacklevel=2,
        )
    load_module_state(model, tensors, prefix, path)
    return model


def load_pretrained(directory, fast: bool = True):
    """(model, RunConfig) from a `save_pretrained` directory (`fast`: see build_model_from_tensors)."""
    from nestar.registry import RunConfig

    directory = Path(directory)
    cfg_path, w_path = directory / "config.json", directory / "model.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(
            f"{directory} is not a saved model (expected config.json and model.safetensors)"
        )
    try:
        config = RunConfig.from_dict(json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"{cfg_path} is not a valid run config: {e}") from e
    try:
        with safe_open(str(w_path), framework="pt") as f:
            tensors = {f"model.{k}": f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointCorruptError(
            f"{w_path} is truncated or corrupt ({type(e).__name__}: {e})"
        ) from e
    _check_finite(w_path, tensors)
    return build_model_from_tensors(config, tensors, "model", w_path, fast=fast), config


def load_model_from_checkpoint(path, use_ema: bool = True, fast: bool = True):
    """(model, RunConfig) from a training checkpoint, EMA weights by default (`fast`: see
    build_model_from_tensors). Only the chosen weights are read, not the optimizer state."""
    from nestar.registry import RunConfig

    chosen: list[str] = []

    def select(keys: list[str]) -> list[str]:
        chosen.append("ema" if use_ema and any(k.startswith("ema.") for k in keys) else "model")
        return [k for k in keys if k.startswith(chosen[0] + ".")]

    meta, tensors = _read(path, select)
    try:
        config = RunConfig.from_dict(_info(meta, path)["config"])
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise CheckpointCorruptError(
            f"checkpoint {path}: the embedded run config is not valid ({e})"
        ) from e
    return build_model_from_tensors(config, tensors, chosen[0], path, fast=fast), config
