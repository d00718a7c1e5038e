"""Helpers shared by CLI commands: config loading from preset/JSON plus overrides, class names.

Nothing here imports torch or the model code at import time: `nestar --help` builds every
sub-command's parser and must stay fast (the heavy imports happen inside the command functions).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Optional, Sequence

DEFAULT_PRESET = "nestar-fmnist"

# The epilog of every command that takes `--section.key=value` overrides.
OVERRIDES_HELP = (
    "config overrides: any field of the run config as --section.key=value, e.g. --train.steps=2000 "
    "--model.order=zorder --train.precision=fp32 (values are Python literals; bare words are strings). "
    "List the valid keys with their values: `nestar presets --keys PRESET`"
)


def add_config_args(
    p: argparse.ArgumentParser, default_preset: Optional[str] = DEFAULT_PRESET, keys: bool = True
) -> None:
    """--preset / --config (/ --keys), and the override syntax in the command's help."""
    default = f" (default {default_preset})" if default_preset else ""
    p.add_argument(
        "--preset",
        default=default_preset,
        metavar="NAME",
        help=f"named preset{default}; `nestar presets` lists them",
    )
    p.add_argument(
        "--config",
        metavar="JSON",
        help="JSON run config (e.g. a run directory's config.json); takes the place of --preset",
    )
    if keys:
        p.add_argument(
            "--keys",
            action="store_true",
            help="print every --section.key=value this command accepts, with its value, and exit",
        )
    add_overrides_epilog(p, OVERRIDES_HELP + (" or add --keys to this command." if keys else "."))


def add_overrides_epilog(p: argparse.ArgumentParser, text: str = OVERRIDES_HELP + ".") -> None:
    """Say in `--help` that the command takes overrides, and let main() pass them through."""
    p.epilog = f"{p.epilog}\n\n{text}" if p.epilog else text
    p.set_defaults(takes_overrides=True)


def read_config_file(path: str | Path) -> dict:
    """A JSON run config file as a dict; a missing, unparsable or non-object file is a ConfigError."""
    from nestar.config import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a JSON object (a run config), got a {type(data).__name__}"
        )
    return data


def load_config(args: argparse.Namespace):
    """The preset or JSON config (a RunConfig), with `--section.key=value` overrides applied and validated."""
    from nestar.config import ConfigError, apply_overrides
    from nestar.registry import get_preset, load_run_config, resolve

    if args.config:
        data = read_config_file(args.config)
        if not isinstance(
            data.get("model"), dict
        ):  # else a default-sized model would train under the file's name
            raise ConfigError(
                f'config file {args.config}: the "model" section is missing or not an object; '
                f"start from a run's config.json or `nestar presets --show NAME`"
            )
        _note_legacy_fields(args.config, data)
        return load_run_config(data, args.overrides)
    return resolve(apply_overrides(get_preset(args.preset), args.overrides))


def _note_legacy_fields(path: str | Path, data: dict) -> None:
    """Say which NestAR fields a config file leaves out and the old value they read as: right for a
    run's config.json from before the field existed, surprising in a hand-written file."""
    import sys

    from nestar.registry import NESTAR_LEGACY_DEFAULTS

    if data.get("model_type", "nestar") != "nestar":
        return
    missing = {k: v for k, v in NESTAR_LEGACY_DEFAULTS.items() if k not in data["model"]}
    if missing:
        read_as = ", ".join(f"model.{k}={v!r}" for k, v in missing.items())
        print(
            f"nestar: config file {path} leaves out NestAR fields added later; they read as the "
            f"values older runs were trained with: {read_as} (set them in the file or with "
            f"--model.KEY=VALUE for today's defaults)",
            file=sys.stderr,
        )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def apply_sample_overrides(config, overrides: list[str], command: str, **flags):
    """`config` (a RunConfig) with `--sample.*` overrides and the non-None `flags` (sample field -> value)
    applied and validated. Other sections are refused: a checkpoint's model cannot change at sampling."""
    from nestar.config import ConfigError, apply_overrides

    other = [o for o in overrides if not o.lstrip("-").startswith("sample.")]
    if other:
        raise ConfigError(
            f"nestar {command} with a checkpoint takes only --sample.* overrides (the rest of the "
            f"config comes from the checkpoint), got: {' '.join(other)}"
        )
    items = list(overrides) + [f"sample.{k}={v!r}" for k, v in flags.items() if v is not None]
    return apply_overrides(config, items) if items else config


def override_keys(cfg_dict: dict, derived: Sequence[str] = ()) -> list[str]:
    """`--section.key=value` lines for every leaf of a config dict; `derived` keys are marked as such."""
    from nestar.training.resume import flatten

    lines = []
    for key, value in flatten(cfg_dict).items():
        note = "  (derived from data + tokenizer; not settable)" if key in derived else ""
        lines.append(f"--{key}={json.dumps(value)}{note}")
    return lines


def print_run_config_keys(cfg) -> None:
    """Print the override keys of a RunConfig (history is a record, not a setting)."""
    from nestar.registry import config_to_dict

    d = {k: v for k, v in config_to_dict(cfg).items() if k != "history"}
    print(
        "\n".join(
            override_keys(d, derived=("model.grid_size", "model.token_dim", "model.num_classes"))
        )
    )


# --- class names ---------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def class_index(text: str, names: Sequence[str]) -> Optional[int]:
    """Index of a forgiving spelling of a class name: case, spaces, dashes and slashes are ignored
    ('tshirt', 'T-shirt', 'ankle-boot'), a name's part after a slash counts ('top'), as does a
    plural 's' ('sneakers') and a part that fits one class only ('boot'). None if nothing fits."""
    want = _norm(text)
    if not want:
        return None
    aliases = [{_norm(n), *(_norm(part) for part in n.split("/"))} for n in names]
    for cand in (want, want[:-1] if want.endswith("s") else None):
        hits = [i for i, a in enumerate(aliases) if cand in a]
        if len(hits) == 1:
            return hits[0]
    hits = [i for i, a in enumerate(aliases) if any(want in alias for alias in a)]
    return hits[0] if len(hits) == 1 else None


def parse_classes(
    text: Optional[str], num_classes: int, names: Optional[Sequence[str]] = None
) -> list[int]:
    """Comma-separated class ids and/or names (when the dataset has names) -> ids; empty: all classes."""
    from nestar.config import ConfigError

    if not text:
        return list(range(num_classes))
    classes = []
    for item in (t.strip() for t in text.split(",")):
        if re.fullmatch(r"-?\d+", item):
            classes.append(int(item))
            continue
        idx = class_index(item, names) if names else None
        if idx is None:
            known = (
                f"class names: {', '.join(names)} (any case; 'tshirt', 'ankle-boot' work too)"
                if names
                else "this dataset has no class names: use ids"
            )
            raise ConfigError(
                f"--classes: {item!r} is neither a class id in [0, {num_classes}) nor a class name; "
                f"{known}"
            )
        classes.append(idx)
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--classes {bad} out of range [0, {num_classes})")
    return classes
