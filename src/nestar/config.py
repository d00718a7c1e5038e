"""Dataclass configs: conversion to/from JSON dicts and `--key=value` overrides.

Every config in nestar is a (possibly nested) dataclass. Unknown or ill-typed fields raise
`ConfigError` naming the field, so a typo on the command line or a config from another version
never passes silently.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from nestar.errors import ConfigError

T = TypeVar("T")
__all__ = [
    "ConfigError",
    "apply_overrides",
    "check_min",
    "diff_configs",
    "from_dict",
    "save_json",
    "to_dict",
]


def check_min(prefix: str, minimum: float, **values: float) -> None:
    """Raise ConfigError naming the first of `values` below `minimum`.

    E.g. `check_min("train.", 0, warmup_steps=-1)`.
    """
    for name, v in values.items():
        if v is not None and v < minimum:
            raise ConfigError(f"{prefix}{name} must be >= {minimum}, got {v}")


def to_dict(cfg: Any) -> dict:
    """A JSON-serialisable dict of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(value: Any, tp: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or (
        origin is not None and str(origin) == "<class 'types.UnionType'>"
    ):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, field)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{field}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{field}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=field + ".")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field}: expected a sequence, got {value!r}")
        fixed = origin is tuple and args and args[-1] is not Ellipsis
        if fixed and len(value) != len(args):  # tuple[float, float]: exactly two
            raise ConfigError(
                f"{field}: expected {len(args)} values, got {len(value)} ({list(value)!r})"
            )
        seq = [
            _coerce(v, args[i] if fixed else (args[0] if args else Any), f"{field}[{i}]")
            for i, v in enumerate(value)
        ]
        return tuple(seq) if origin is tuple else seq
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{field}: {value!r} is not one of {list(args)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{field}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{field}: expected an int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{field}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{field}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a dict; unknown keys and bad types raise ConfigError."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(
            f"{where}: expected a mapping of fields ({{...}}), got {type(data).__name__} {data!r:.80}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {sorted(prefix + u for u in unknown)}; "
            f"valid fields: {sorted(prefix + n for n in names)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from e
    return obj


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare strings: --model.order=zorder


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Apply `key.sub=value` overrides (values parsed as Python literals) to a nested dataclass.

    Returns a new, validated config; the error of a bad key lists the valid keys at that level.
    """
    data = to_dict(cfg)
    for item in overrides:
        item = item[2:] if item.startswith("--") else item
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.replace("-", "_").split(".")
        node = data
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node.get(p), dict):
                raise ConfigError(
                    f"override {key!r}: {'.'.join(parts[: i + 1])} is not a config section; "
                    f"sections: {sorted(k for k, v in node.items() if isinstance(v, dict))}"
                )
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"override {key!r}: unknown field; valid here: {sorted(node)}")
        node[parts[-1]] = _parse_value(text)
    builder = getattr(type(cfg), "from_dict", None)
    return builder(data) if builder else from_dict(type(cfg), data)


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Field paths whose values differ between two config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, prefix + k + ".")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} != {vb!r}")
    return out


def save_json(obj: dict, path: str | Path) -> None:
    """Write JSON atomically (temp file + rename)."""
    from nestar.utils.io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
