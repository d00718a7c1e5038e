"""`nestar train`: train a preset (or JSON config) with `--section.key=value` overrides."""
from __future__ import annotations

import argparse

from nestar.cli.common import add_config_args, load_config


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model; re-running the same command resumes",
                       description="Train a model. Overrides: --train.steps=5000 --model.order=zorder ...")
    add_config_args(p)
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<preset>)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nestar.config import ConfigError
    from nestar.training import Trainer

    cfg = load_config(args)
    run_dir = Path(args.run_dir or f"runs/{cfg.preset or 'custom'}")
    if args.no_resume and (run_dir / "checkpoints").exists():
        raise ConfigError(f"{run_dir} already holds checkpoints; remove it or drop --no-resume to continue it")
    result = Trainer(cfg, run_dir, resume=not args.no_resume, progress=not args.quiet).fit()
    print(f"trained {result.steps} steps in {result.seconds:.0f}s ({result.images_per_sec:.0f} img/s), "
          f"final loss {result.final_loss:.4f}; checkpoint {result.checkpoint}")
    return 0
