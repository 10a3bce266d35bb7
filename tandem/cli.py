"""The `tandem` command. Subcommands live beside the code they drive and import engines lazily."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Collection

from common.errors import TandemError


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage first), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


COMMANDS = {
    "cloud": ("cloud.cli", "serve the target model (verification + generation) over gRPC"),
    "generate": ("edge.cli", "complete a prompt (hybrid, cloud-only or edge-only)"),
    "serve": ("edge.serve", "a local OpenAI-compatible HTTP endpoint (for desktop apps and editor plugins)"),
    "chat": ("edge.chat", "an interactive chat in the terminal (streamed, multi-turn)"),
    "health": ("cloud.health_probe", "probe a cloud's health (exit 0 when SERVING)"),
    "bench": ("bench.cli", "benchmark hybrid, cloud-only and edge-only generation over emulated links"),
    "distill": ("distill.cli", "make a fast draft model for a target by distillation (ends in a quantized GGUF)"),
}
"""Each command: the module whose add_parser(subparsers) and run(args) implement it, and its line
in `tandem --help` (the same as the module's own help). Only the command being run is imported,
so `tandem --help` and `tandem health` load neither numpy nor the edge (tests/test_help.py)."""


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of `commands` (of every command when None); the others are
    listed, with their help line, but their modules are not imported."""
    parser = _Parser(
        prog="tandem",
        description="Hybrid edge-cloud inference: a local llama.cpp model drafts tokens, a cloud gRPC "
                    "service verifies them with the large model (speculative decoding). Output is exactly "
                    "the cloud model's.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # Edge commands without --cloud start one on loopback (edge/ cannot import cloud/ itself).
    parser.set_defaults(start_cloud=_start_on_loopback)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_line) in COMMANDS.items():
        if commands is None or name in commands:
            importlib.import_module(module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_line)
    return parser


def _command_in(argv: list[str]) -> set[str]:
    """The command argv names (its first word that is not an option), if it names one."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return {first} if first in COMMANDS else set()


def _start_on_loopback(model: str | None):
    from cloud.embedded import start_on_loopback  # the cloud's server stack: only when needed

    return start_on_loopback(model)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_in(argv)).parse_args(argv)
    # A server's log wants timestamps; an interactive command's progress lines do not.
    timestamps = "%(asctime)s " if args.command == "cloud" else ""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"{timestamps}%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return args.run(args)
    except TandemError as exc:  # bad input, or a refusal: says what is wrong and what to do
        print(f"tandem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the user, the traceback with -v
        if args.verbose:
            raise
        print(f"tandem: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", file=sys.stderr)
        return 1

