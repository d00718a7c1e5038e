"""Benchmarks: speed (`nestar bench speed`), quality, head steps and claims; see benchmarks/README.md.

Submodules are imported on use, not here: `nestar.bench.claims` is pure statistics and must load
without torch (PEP 562 lazy attributes keep `from nestar.bench import run_speed` working).
"""

from importlib import import_module
from typing import Any

__all__ = ["SpeedOptions", "run_speed", "write_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("nestar.bench.speed"), name)
    raise AttributeError(f"module 'nestar.bench' has no attribute {name!r}")
