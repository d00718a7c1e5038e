"""`nestar presets`: list the named presets, show one's config, or list the valid override keys."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    from nestar.cli.common import DEFAULT_PRESET, add_overrides_epilog

    p = sub.add_parser(
        "presets",
        help="list named presets; --keys PRESET lists the valid --section.key=value overrides",
        description="Without options: every named preset with its model type, parameter count, sequential "
        "steps per image and a one-line summary. --show NAME prints a preset's resolved run config "
        "as JSON; --keys NAME prints each override key with its value in that preset.\n\n"
        "  nestar presets --keys nestar-fmnist\n"
        "  nestar presets --show nestar-fmnist --train.steps=2000",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--show",
        metavar="NAME",
        help="print the resolved config of one preset (with overrides) as JSON",
    )
    g.add_argument(
        "--keys",
        metavar="NAME",
        nargs="?",
        const=DEFAULT_PRESET,
        help=f"print every --section.key=value of one preset with its value (default {DEFAULT_PRESET})",
    )
    add_overrides_epilog(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nestar.cli.common import print_run_config_keys
    from nestar.config import apply_overrides
    from nestar.registry import PRESETS, build_model, config_to_dict, get_preset, resolve

    if args.overrides and not (args.show or args.keys):
        from nestar.config import ConfigError

        raise ConfigError(
            f"`nestar presets` takes --section.key=value overrides only with --show NAME or --keys "
            f"NAME, got: {' '.join(args.overrides)}"
        )
    if args.show or args.keys:
        cfg = resolve(apply_overrides(get_preset(args.show or args.keys), args.overrides))
        if args.keys:
            print_run_config_keys(cfg)
        else:
            print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    import torch

    for name in sorted(PRESETS):
        cfg = get_preset(name)
        with torch.device(
            "meta"
        ):  # sizes only: no memory or init time for the ~1B-parameter ImageNet presets
            model = build_model(cfg)
        doc = (PRESETS[name].__doc__ or "").strip().splitlines()[0]
        print(
            f"{name:16s} {cfg.model_type:10s} {model.num_params() / 1e6:6.2f}M params  "
            f"{model.sequential_steps():4d} steps  {doc}"
        )
    return 0
