"""The `gpt2kit` command: one verb per module in this package, each mapping to a typed function.

Every module here has `register(subparsers)`, which adds its verb(s) and sets `func`.
Errors that users can fix (GPT2KitError) print as one line, `gpt2kit VERB: error: ...`,
with no traceback; argparse errors are shortened the same way.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# verb modules, in --help order
VERB_MODULES = ["generate", "chat", "download", "prepare", "train", "serve", "convert", "merge", "export", "eval", "demo", "tokenizer", "tokenize"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the fix, instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpt2kit", description="GPT-2 toolkit: generate, train, prepare, serve, convert, evaluate.")
    from gpt2kit import __version__

    parser.add_argument("--version", action="version", version=f"gpt2kit {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for name in VERB_MODULES:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gpt2kit.errors import GPT2KitError

    from .common import cli_message

    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except GPT2KitError as e:
        print(f"gpt2kit {args.verb}: error: {cli_message(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gpt2kit generate ... | head`
        return 0
