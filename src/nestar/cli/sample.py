"""`nestar sample`: a PNG grid (one row per class) and an optional coarse-to-fine strip."""

from __future__ import annotations

import argparse

from nestar.cli.common import add_overrides_epilog, positive_int


def add_parser(sub) -> None:
    from nestar.pretrained import describe_available

    p = sub.add_parser(
        "sample",
        help="sample a PNG grid from a trained run or a shipped pretrained model",
        description="Sample images, one row per class, into a PNG grid; optionally also a coarse-to-fine strip "
        "(the image after each NestAR module). --sample.key=value overrides (e.g. --sample.cfg=4) apply to "
        "the model's sampling settings; the options below take precedence.\n\n"
        "  nestar sample --pretrained nestar-fmnist --classes sneaker,bag --out grid.png\n"
        "  nestar sample runs/a --per-class 10 --strip strip.png\n\n"
        f"Pretrained models shipped with the package: {describe_available()}.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "path",
        nargs="?",
        default=None,
        help="run directory, checkpoint .safetensors, save_pretrained directory, or a shipped model name",
    )
    src.add_argument(
        "--pretrained",
        metavar="NAME",
        default=None,
        help=f"a pretrained model shipped with the package ({describe_available()})",
    )
    p.add_argument("--out", default="samples.png", help="output PNG grid")
    p.add_argument(
        "--strip", default=None, metavar="PNG", help="also write a coarse-to-fine strip PNG here"
    )
    p.add_argument(
        "--per-class", type=positive_int, default=8, metavar="N", help="samples per class (columns)"
    )
    p.add_argument(
        "--classes",
        default=None,
        metavar="LIST",
        help="comma-separated class ids or names, e.g. 7,8 or sneaker,bag (Fashion-MNIST names: T-shirt/top, "
        "Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot; any case, "
        "'tshirt' and 'ankle-boot' work too; default: all classes)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        metavar="N",
        help="images sampled per forward pass (lower it to save memory; same seed and batch size, "
        "same images)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed: the same seed gives the same images (default: the model's sample.seed)",
    )
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the config's)")
    p.add_argument(
        "--cfg-schedule",
        choices=["constant", "linear"],
        default=None,
        help="guidance over the generation: constant, or rising linearly (default: the config's)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (default: the config's)",
    )
    p.add_argument(
        "--num-steps",
        type=positive_int,
        default=None,
        help="flow-head ODE steps (default: the config's)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="sampling precision (default: the run's sample.precision, 'auto': bf16 autocast only "
        "where the hardware runs it natively)",
    )
    p.add_argument(
        "--no-ema",
        action="store_true",
        help="use raw instead of EMA weights (training checkpoints only)",
    )
    p.add_argument(
        "--device", default="cpu", help="torch device to sample on: cpu, cuda, cuda:1, ..."
    )
    add_overrides_epilog(
        p,
        "config overrides (--section.key=value, the sample section only): --sample.key=value, "
        "e.g. --sample.cfg=4 --sample.num_steps=12; "
        "the options above take precedence, other sections are refused (the model comes from "
        "the checkpoint); `nestar presets --keys PRESET` lists the sample.* keys.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from nestar.cli.common import apply_sample_overrides, parse_classes
    from nestar.data import class_names
    from nestar.pipeline import Pipeline
    from nestar.utils.images import save_grid
    from nestar.visualize import coarse_to_fine_strip, stage_label

    pipe = Pipeline.from_pretrained(
        args.pretrained or args.path, device=args.device, use_ema=not args.no_ema
    )
    # Overrides, then the explicit options, all validated as a SampleConfig before sampling starts.
    pipe.config = apply_sample_overrides(
        pipe.config,
        args.overrides,
        "sample",
        cfg=args.cfg,
        cfg_schedule=args.cfg_schedule,
        temperature=args.temperature,
        num_steps=args.num_steps,
        precision=args.precision,
        seed=args.seed,
    )
    print(f"sampling {pipe.precision.describe()}")
    classes = parse_classes(
        args.classes, pipe.config.data.num_classes, class_names(pipe.config.data)
    )
    labels = torch.tensor(classes).repeat_interleave(args.per_class)
    t0 = time.perf_counter()
    out = pipe(
        labels,
        generator=torch.Generator().manual_seed(pipe.config.sample.seed),
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - t0
    save_grid(out.images, args.out, nrow=args.per_class, scale=2)
    print(
        f"wrote {args.out} ({len(classes)} classes x {args.per_class}, {out.sequential_steps} sequential steps, "
        f"{seconds:.1f}s)"
    )
    if args.strip:
        coarse_to_fine_strip(
            out,
            rows=len(classes),
            per_row=args.per_class,
            path=args.strip,
            stage_label=stage_label(pipe.config.model_type),
        )
        print(f"wrote {args.strip}")
    return 0
