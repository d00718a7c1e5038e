"""`nestar` command line. Each sub-command lives in its own module with `add_parser` and `run`.

Building the parser imports no torch and no model code (those modules import them inside `run`),
so `nestar --help` and `nestar COMMAND --help` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

DESCRIPTION = """\
NestAR: autoregressive image generation with continuous tokens, and its baselines (raster AR, MAR,
ARINAR, next-scale).

See samples at once from the model that ships with the package, or train, sample and score a small
model on Fashion-MNIST in one go:

  nestar sample --pretrained nestar-fmnist --classes sneaker,bag --out grid.png
  nestar demo"""

EPILOG = """\
Run `nestar COMMAND --help` for a command's options. Commands that take a run config (train, demo,
eval, presets, bench) also accept overrides of any config field as --section.key=value, e.g.
--train.steps=2000; `nestar presets --keys PRESET` lists the valid keys with their values.

Errors in the input end with one line on stderr and exit status 2; add --debug (anywhere) for the
full traceback."""

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


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description or epilog on its own and keeps indented example lines
    as written; shows defaults that are not None/False."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n\n"):
            if para.startswith("  "):  # examples
                out.append("\n".join(indent + line for line in para.splitlines()))
            else:
                out.append(
                    textwrap.fill(
                        " ".join(para.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                    )
                )
        return "\n\n".join(out)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.default is None
            or action.default is False
            or action.default is argparse.SUPPRESS
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nestar", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of expected errors too"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for mod in COMMANDS.values():
        importlib.import_module(mod).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nestar.errors import UserError  # no torch: the error classes only

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted before or after the sub-command
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if not (e.startswith("--") and "=" in e)]
    if bad:
        parser.error(
            f"unrecognised arguments: {' '.join(bad)} (config overrides take the form --section.key=value)"
        )
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"`nestar {args.command}` takes no config overrides: {' '.join(extra)}")
    args.overrides = extra
    # "bench claims", not "bench": a user-facing error names the command that was run
    command = " ".join(filter(None, (args.command, getattr(args, "bench_command", None))))
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        if debug:
            raise
        print(f"nestar {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"nestar {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
