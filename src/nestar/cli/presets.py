"""`nestar presets`: list the named presets with their model size and step count."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help="list named presets")
    p.add_argument("--show", metavar="NAME", help="print the resolved config of one preset as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nestar.config import ConfigError, apply_overrides
    from nestar.registry import PRESETS, build_model, config_to_dict, get_preset, resolve

    if args.overrides and not args.show:
        raise ConfigError(f"`nestar presets` takes --section.key=value overrides only with --show NAME, "
                          f"got: {' '.join(args.overrides)}")
    if args.show:
        cfg = resolve(apply_overrides(get_preset(args.show), args.overrides))
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    import torch

    for name in sorted(PRESETS):
        cfg = get_preset(name)
        with torch.device("meta"):  # sizes only: no memory or init time for the ~1B-parameter ImageNet presets
            model = build_model(cfg)
        doc = (PRESETS[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:16s} {cfg.model_type:10s} {model.num_params() / 1e6:6.2f}M params  "
              f"{model.sequential_steps():4d} steps  {doc}")
    return 0
