"""`nestar train`: train a preset (or JSON config) with `--section.key=value` overrides.

Runs data-parallel unchanged under `torchrun --nproc_per_node=N -m nestar.cli.main train ...` (docs/scaling.md).
"""

from __future__ import annotations

import argparse

from nestar.cli.common import add_config_args, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model; re-running the same command resumes",
        description="Train a model from a preset or a JSON config into a run directory (config.json, log.csv, "
        "samples/, checkpoints/last.safetensors, model/). Re-running the same command resumes from "
        "the last checkpoint; resuming with other training settings stops and lists what would "
        "change, unless --allow-config-change (--train.steps may be raised freely).\n\n"
        "  nestar train --preset nestar-fmnist --run-dir runs/a --train.steps=2000 --model.order=zorder",
    )
    add_config_args(p)
    p.add_argument(
        "--run-dir", default=None, metavar="DIR", help="output directory (default: runs/<preset>)"
    )
    p.add_argument(
        "--no-resume", action="store_true", help="refuse to continue an existing run directory"
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume even though training settings differ from the checkpoint's; the changes are "
        "recorded in config.json under 'history'",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        metavar="STEP",
        help="stop (with a checkpoint) at this global step; re-run to continue to --train.steps",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import gc
    from pathlib import Path

    from nestar.cli.common import load_config, print_run_config_keys
    from nestar.config import ConfigError
    from nestar.training import Trainer
    from nestar.training.distributed import exit_without_teardown, shutdown_distributed

    cfg = load_config(args)
    if args.keys:
        print_run_config_keys(cfg)
        return 0
    run_dir = Path(args.run_dir or f"runs/{cfg.preset or 'custom'}")
    if args.no_resume and (run_dir / "checkpoints").exists():
        raise ConfigError(
            f"{run_dir} already holds checkpoints; remove it or drop --no-resume to continue it"
        )
    try:  # under torchrun the Trainer joins the process group; only rank 0 reports
        trainer = Trainer(
            cfg,
            run_dir,
            resume=not args.no_resume,
            progress=not args.quiet,
            allow_config_change=args.allow_config_change,
        )
        start = trainer.step
        result = trainer.fit(max_steps=args.max_steps)
        if trainer.dist.is_main:
            print(_report(result, start, trainer.cfg.train.steps, trainer.dist.world_size))
        distributed = trainer.dist.enabled
        # The DDP/FSDP wrappers hold the process group: free them while it is alive, so that its
        # gloo threads are joined inside destroy_process_group rather than at interpreter exit.
        del trainer
        gc.collect()
        shutdown_distributed(sync=True)  # all ranks leave together (see its docstring)
    finally:
        shutdown_distributed()  # after an error: no barrier, the peers may never arrive
    if distributed:
        # everything is written (checkpoint and files atomically, the log closed by fit), group gone
        exit_without_teardown(0)
    return 0


def _report(result, start: int, steps: int, world_size: int) -> str:
    """One line: what this invocation did, or that the run was already finished."""
    if result.steps == start and start >= steps:
        return (
            f"{result.run_dir} is finished: {result.steps} of {steps} steps, last loss {result.final_loss:.4f} "
            f"(log.csv); checkpoint {result.checkpoint}. To train longer: --train.steps=N with N > {steps}"
        )
    world = f" on {world_size} processes" if world_size > 1 else ""
    return (
        f"trained {result.steps} steps{world} in {result.seconds:.0f}s ({result.images_per_sec:.0f} img/s), "
        f"final loss {result.final_loss:.4f}; checkpoint {result.checkpoint}"
    )
