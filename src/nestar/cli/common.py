"""Helpers shared by CLI commands: config loading from preset/JSON plus overrides."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nestar.config import ConfigError, apply_overrides
from nestar.registry import RunConfig, get_preset, load_run_config, resolve


def add_config_args(p: argparse.ArgumentParser, default_preset: str | None = "nestar-fmnist") -> None:
    p.add_argument("--preset", default=default_preset, help="named preset (see `nestar presets`)")
    p.add_argument("--config", help="JSON run config (e.g. a run directory's config.json); overrides --preset")


def read_config_file(path: str | Path) -> dict:
    """A JSON run config file as a dict; a missing, unparsable or non-object file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object (a run config), got a {type(data).__name__}")
    return data


def load_config(args: argparse.Namespace) -> RunConfig:
    """The preset or JSON config, with `--section.key=value` overrides applied and validated."""
    if args.config:
        data = read_config_file(args.config)
        if not isinstance(data.get("model"), dict):  # else a default-sized model would train under the file's name
            raise ConfigError(f"config file {args.config}: the \"model\" section is missing or not an object; "
                              f"start from a run's config.json or `nestar presets --show NAME`")
        return load_run_config(data, args.overrides)
    return resolve(apply_overrides(get_preset(args.preset), args.overrides))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def apply_sample_overrides(config: RunConfig, overrides: list[str], command: str, **flags) -> RunConfig:
    """`config` with `--sample.*` overrides and the non-None `flags` (sample field -> value) applied and
    validated. Other sections are refused: the model of a checkpoint cannot change at sampling time."""
    other = [o for o in overrides if not o.lstrip("-").startswith("sample.")]
    if other:
        raise ConfigError(f"nestar {command} with a checkpoint takes only --sample.* overrides (the rest of the "
                          f"config comes from the checkpoint), got: {' '.join(other)}")
    items = list(overrides) + [f"sample.{k}={v!r}" for k, v in flags.items() if v is not None]
    return apply_overrides(config, items) if items else config


def parse_classes(text: str | None, num_classes: int) -> list[int]:
    if not text:
        return list(range(num_classes))
    try:
        classes = [int(c) for c in text.split(",")]
    except ValueError as e:
        raise ConfigError(f"--classes must be comma-separated integers, got {text!r}") from e
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--classes {bad} out of range [0, {num_classes})")
    return classes
