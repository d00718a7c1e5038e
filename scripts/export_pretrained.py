#!/usr/bin/env python3
"""Ship a finished run as a pretrained model: scripts/export_pretrained.py RUN_DIR NAME.

Writes src/nestar/assets/pretrained/NAME/{model.safetensors, config.json, metrics.json} (the EMA
weights of RUN_DIR/checkpoints/last.safetensors, the run config, provenance and evaluation figures;
see nestar/training/export.py). Then `nestar sample --pretrained NAME` and
`Pipeline.from_pretrained("NAME")` load it, and pyproject.toml's package-data ships it.

  .venv/bin/python scripts/export_pretrained.py runs/nestar-fmnist nestar-fmnist --metrics metrics.json
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run directory (checkpoints/last.safetensors, log.csv)")
    p.add_argument("name", help="name of the shipped model, e.g. nestar-fmnist")
    p.add_argument("--metrics", action="append", default=[], metavar="JSON",
                   help="evaluation JSON to include (repeatable; the run's demo_results.json and metrics.json "
                        "are included when present)")
    p.add_argument("--root", default=None, help="pretrained folder (default: the package's assets/pretrained)")
    p.add_argument("--allow-unfinished", action="store_true", help="export a run that stopped before train.steps")
    p.add_argument("--overwrite", action="store_true", help="replace a model of that name")
    args = p.parse_args(argv)

    from nestar.serialization import CheckpointError
    from nestar.training.export import export_pretrained

    try:
        dest = export_pretrained(args.run_dir, args.name, args.root, metrics=args.metrics,
                                 allow_unfinished=args.allow_unfinished, overwrite=args.overwrite)
    except (CheckpointError, FileExistsError, ValueError) as e:
        print(f"export_pretrained: error: {e}", file=sys.stderr)
        return 2
    for f in sorted(dest.iterdir()):
        print(f"wrote {f} ({f.stat().st_size / 2**20:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
