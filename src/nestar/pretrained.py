"""Pretrained models that ship inside the package: `src/nestar/assets/pretrained/<name>/`.

Each folder holds `model.safetensors` (EMA weights), `config.json` (the resolved run config, as
`save_pretrained` writes it) and `metrics.json` (where the weights came from and how they score).
`Pipeline.from_pretrained(name)` and `nestar sample --pretrained NAME` load them by name;
`scripts/export_pretrained.py RUN_DIR NAME` adds one from a finished run.

This module only looks at files (no torch import), so the CLI can list the names in `--help`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

PRETRAINED_DIR = Path(__file__).resolve().parent / "assets" / "pretrained"
FILES = ("model.safetensors", "config.json", "metrics.json")


def available(root: Optional[Path] = None) -> list[str]:
    """Names of the complete pretrained models under `root` (default: the package's)."""
    root = PRETRAINED_DIR if root is None else Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and all((p / f).is_file() for f in FILES)
    )


def pretrained_dir(name: str, root: Optional[Path] = None) -> Optional[Path]:
    """The folder of shipped model `name`, or None when no complete model of that name ships."""
    root = PRETRAINED_DIR if root is None else Path(root)
    return root / name if name in available(root) else None


def read_metrics(name: str, root: Optional[Path] = None) -> dict:
    """The `metrics.json` of shipped model `name` (KeyError naming the shipped ones if absent)."""
    d = pretrained_dir(name, root)
    if d is None:
        raise KeyError(f"no pretrained model {name!r}; shipped: {available(root) or 'none'}")
    return json.loads((d / "metrics.json").read_text())


def describe_available(root: Optional[Path] = None) -> str:
    """'nestar-fmnist, ...' or a sentence saying that none ships (for help texts and errors)."""
    names = available(root)
    return ", ".join(names) if names else "none ship with this installation"
