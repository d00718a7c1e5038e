"""Benchmarks: the speed harness (`nestar bench speed`, see benchmarks/README.md)."""

from nestar.bench.speed import SpeedOptions, run_speed, write_report

__all__ = ["SpeedOptions", "run_speed", "write_report"]
