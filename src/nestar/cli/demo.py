"""`nestar demo`: the README's first command.

Trains the default NestAR preset on Fashion-MNIST (resuming if the run exists), writes a sample
grid (one row per class) and a coarse-to-fine strip, and prints the sequential step count, ms per
image at batch 64, and the share of samples that the dataset classifier assigns to the class they
were asked for (plus that classifier's own test accuracy).
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from nestar.cli.common import add_config_args

    p = sub.add_parser(
        "demo",
        help="train a small NestAR on Fashion-MNIST, sample, print metrics (about 10-14 min on a CPU)",
        description="The README's first command: train the nestar-fmnist-demo preset on Fashion-MNIST (resuming "
        "if RUN_DIR holds a checkpoint), then write RUN_DIR/demo_grid.png (one row per class) and "
        "RUN_DIR/demo_strip.png (the image after each module), and print the sequential step count, "
        "ms per image at batch 64 and the class agreement of --num-eval samples under the shipped "
        "Fashion-MNIST classifier. To see samples without training: nestar sample --pretrained "
        "nestar-fmnist.",
    )
    add_config_args(p, default_preset="nestar-fmnist-demo")
    p.add_argument(
        "--run-dir",
        default="runs/demo",
        metavar="DIR",
        help="run directory (re-running resumes it)",
    )
    p.add_argument(
        "--num-eval",
        type=int,
        default=500,
        help="samples (balanced over classes) for class agreement",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume RUN_DIR even though its training settings differ (recorded in config.json)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import torch

    from nestar.cli.common import load_config, print_run_config_keys
    from nestar.config import save_json
    from nestar.evaluation.classifier import get_classifier
    from nestar.pipeline import Pipeline
    from nestar.training import Trainer
    from nestar.utils.images import save_grid
    from nestar.utils.precision import cpu_description
    from nestar.visualize import coarse_to_fine_strip

    cfg = load_config(args)
    if args.keys:
        print_run_config_keys(cfg)
        return 0
    run_dir = Path(args.run_dir)
    torch.manual_seed(cfg.train.seed)

    t_start = time.perf_counter()
    print(
        "== 1/4 dataset classifier (shipped for Fashion-MNIST; other data: trained once, then cached)"
    )
    classifier, info = get_classifier(cfg.data, progress=not args.quiet)
    print(f"   classifier test accuracy {info['test_accuracy']:.2%} ({info['cache_path']})")

    print(f"== 2/4 training {cfg.preset or 'NestAR'} for {cfg.train.steps} steps -> {run_dir}")
    t0 = time.perf_counter()
    result = Trainer(
        cfg, run_dir, progress=not args.quiet, allow_config_change=args.allow_config_change
    ).fit()
    train_s = time.perf_counter() - t0

    print("== 3/4 sampling")
    pipe = Pipeline.from_pretrained(run_dir)
    print(f"   sampling {pipe.precision.describe()}")
    n_cls = cfg.data.num_classes
    # One sampling pass serves everything (the slowest CPUs pay for every image): the class
    # agreement samples, the grid (their first 10 per class) and the speed figure (batches of 64).
    per = max(10, args.num_eval // n_cls)
    eval_labels = torch.arange(n_cls).repeat_interleave(per)
    t1 = time.perf_counter()
    out = pipe(eval_labels, generator=torch.Generator().manual_seed(cfg.sample.seed), batch_size=64)
    ms_per_image = (time.perf_counter() - t1) * 1000 / len(eval_labels)
    first10 = (torch.arange(len(eval_labels)) % per) < 10
    out_grid = type(out)(
        images=out.images[first10],
        intermediates=[t[first10] for t in out.intermediates],
        sequential_steps=out.sequential_steps,
        known=out.known,
    )
    grid = save_grid(out_grid.images, run_dir / "demo_grid.png", nrow=10, scale=2)
    strip = coarse_to_fine_strip(out_grid, rows=n_cls, per_row=10, path=run_dir / "demo_strip.png")
    print(f"   wrote {grid} and {strip}")

    print(f"== 4/4 class agreement on {len(eval_labels)} samples")
    with torch.no_grad():
        pred = classifier(out.images).argmax(-1)
    agreement = (pred == eval_labels).float().mean().item()
    per_class = [(pred[eval_labels == c] == c).float().mean().item() for c in range(n_cls)]

    summary = {
        "preset": cfg.preset,
        "params_M": round(pipe.model.num_params() / 1e6, 3),
        "sequential_steps": out.sequential_steps,
        "train_steps": result.steps,
        "train_seconds_this_invocation": round(train_s, 1),
        "train_images_per_sec": round(result.images_per_sec, 1),
        "ms_per_image_batch64": round(ms_per_image, 2),  # over all eval samples, batches of 64
        "class_agreement": round(agreement, 4),
        "class_agreement_per_class": [round(a, 3) for a in per_class],
        "num_eval_samples": len(eval_labels),
        "classifier_test_accuracy": round(info["test_accuracy"], 4),
        "sampling": {
            "cfg": cfg.sample.cfg,
            "cfg_schedule": cfg.sample.cfg_schedule,
            "temperature": cfg.sample.temperature,
            "head_steps": cfg.sample.num_steps,
        },
        "train_precision": result.precision,
        "sample_precision": pipe.precision.name,
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "demo_seconds_this_invocation": round(time.perf_counter() - t_start, 1),
    }
    save_json(summary, run_dir / "demo_results.json")
    print("\n== NestAR demo results")
    print(f"   sequential steps per image : {summary['sequential_steps']}")
    print(f"   ms per image (batch 64)    : {summary['ms_per_image_batch64']}")
    print(
        f"   class agreement            : {agreement:.1%} of {len(eval_labels)} samples "
        f"(classifier test accuracy {info['test_accuracy']:.1%})"
    )
    print(
        f"   training                   : {result.steps} steps, {train_s:.0f}s this run ({result.precision})"
    )
    print(
        f"   whole demo (this run)      : {summary['demo_seconds_this_invocation']:.0f}s on {summary['cpu']}"
    )
    print(f"   grid / strip               : {grid} / {strip}")
    print(f"   all figures                : {run_dir / 'demo_results.json'}")
    print(json.dumps(summary))
    return 0
