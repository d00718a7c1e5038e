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


def load_config(args: argparse.Namespace) -> RunConfig:
    """The preset or JSON config, with `--section.key=value` overrides applied and validated."""
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
        return load_run_config(data, args.overrides)
    return resolve(apply_overrides(get_preset(args.preset), args.overrides))


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
