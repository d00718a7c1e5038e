"""`nestar train`: train a preset (or JSON config) with `--section.key=value` overrides.

Runs data-parallel unchanged under `torchrun --nproc_per_node=N -m nestar.cli.main train ...` (docs/scaling.md).
"""
from __future__ import annotations

import argparse

from nestar.cli.common import add_config_args, load_config, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model; re-running the same command resumes",
                       description="Train a model. Overrides: --train.steps=5000 --model.order=zorder ...")
    add_config_args(p)
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<preset>)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop (with a checkpoint) at this global step; re-run to continue to --train.steps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nestar.config import ConfigError
    from nestar.training import Trainer

    cfg = load_config(args)
    run_dir = Path(args.run_dir or f"runs/{cfg.preset or 'custom'}")
    if args.no_resume and (run_dir / "checkpoints").exists():
        raise ConfigError(f"{run_dir} already holds checkpoints; remove it or drop --no-resume to continue it")
    from nestar.training.distributed import shutdown_distributed

    try:  # under torchrun the Trainer joins the process group; only rank 0 reports
        trainer = Trainer(cfg, run_dir, resume=not args.no_resume, progress=not args.quiet)
        result = trainer.fit(max_steps=args.max_steps)
        if trainer.dist.is_main:
            world = f" on {trainer.dist.world_size} processes" if trainer.dist.world_size > 1 else ""
            print(f"trained {result.steps} steps{world} in {result.seconds:.0f}s ({result.images_per_sec:.0f} img/s), "
                  f"final loss {result.final_loss:.4f}; checkpoint {result.checkpoint}")
    finally:
        shutdown_distributed()
    return 0
