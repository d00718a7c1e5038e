"""`nestar` command line. Each sub-command lives in its own module with `add_parser` and `run`."""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; each module defines add_parser(subparsers) and run(args) -> int | None
COMMANDS = {
    "train": "nestar.cli.train",
    "sample": "nestar.cli.sample",
    "demo": "nestar.cli.demo",
    "presets": "nestar.cli.presets",
    "bench": "nestar.cli.bench",
    "train-tokenizer": "nestar.cli.train_tokenizer",
    "cache-latents": "nestar.cli.cache_latents",
    "eval": "nestar.cli.eval",
    "serve": "nestar.cli.serve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nestar", description=__doc__,
                                     epilog="Errors in the input end with one line on stderr and exit status 2; "
                                            "add --debug (anywhere) for the full traceback.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of expected errors too")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, mod in COMMANDS.items():
        importlib.import_module(mod).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nestar.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted before or after the sub-command
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if not (e.startswith("--") and "=" in e)]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (config overrides take the form --section.key=value)")
    args.overrides = extra
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        if debug:
            raise
        print(f"nestar {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"nestar {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
