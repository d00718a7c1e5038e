"""`nestar sample`: a PNG grid (one row per class) and an optional coarse-to-fine strip."""
from __future__ import annotations

import argparse

from nestar.cli.common import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a PNG grid from a run directory, checkpoint or exported model",
                       description="Sample a PNG grid. --sample.key=value overrides (e.g. --sample.cfg=4) apply to "
                                   "the checkpoint's sampling settings; the options below take precedence.")
    p.add_argument("path", help="run directory, checkpoint .safetensors, or save_pretrained directory")
    p.add_argument("--out", default="samples.png", help="output PNG grid")
    p.add_argument("--strip", default=None, help="also write a coarse-to-fine strip PNG here")
    p.add_argument("--per-class", type=positive_int, default=8, help="samples per class (columns)")
    p.add_argument("--classes", default=None, help="comma-separated class ids (default: all)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's sample.seed)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the config's)")
    p.add_argument("--cfg-schedule", choices=["constant", "linear"], default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--num-steps", type=positive_int, default=None, help="flow-head ODE steps")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="sampling precision (default: the run's sample.precision, 'auto': bf16 autocast only "
                        "where the hardware runs it natively)")
    p.add_argument("--no-ema", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from nestar.cli.common import apply_sample_overrides, parse_classes
    from nestar.pipeline import Pipeline
    from nestar.utils.images import save_grid
    from nestar.visualize import coarse_to_fine_strip

    pipe = Pipeline.from_pretrained(args.path, device=args.device, use_ema=not args.no_ema)
    # Overrides, then the explicit options, all validated as a SampleConfig before sampling starts.
    pipe.config = apply_sample_overrides(pipe.config, args.overrides, "sample", cfg=args.cfg,
                                         cfg_schedule=args.cfg_schedule, temperature=args.temperature,
                                         num_steps=args.num_steps, precision=args.precision, seed=args.seed)
    print(f"sampling {pipe.precision.describe()}")
    classes = parse_classes(args.classes, pipe.config.data.num_classes)
    labels = torch.tensor(classes).repeat_interleave(args.per_class)
    out = pipe(labels, generator=torch.Generator().manual_seed(pipe.config.sample.seed))
    save_grid(out.images, args.out, nrow=args.per_class, scale=2)
    print(f"wrote {args.out} ({len(classes)} classes x {args.per_class}, {out.sequential_steps} sequential steps)")
    if args.strip:
        coarse_to_fine_strip(out, rows=len(classes), per_row=args.per_class, path=args.strip)
        print(f"wrote {args.strip}")
    return 0
