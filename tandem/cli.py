"""The `tandem` command. Subcommands live beside the code they drive and import engines lazily."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common.errors import TandemError


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage first), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from bench import cli as bench_cli
    from cloud import cli as cloud_cli
    from cloud import health_probe
    from distill import cli as distill_cli
    from edge import chat as chat_cli
    from edge import cli as edge_cli
    from edge import serve as serve_cli

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
    cloud_cli.add_parser(subparsers)
    edge_cli.add_parser(subparsers)
    serve_cli.add_parser(subparsers)
    chat_cli.add_parser(subparsers)
    health_probe.add_parser(subparsers)
    bench_cli.add_parser(subparsers)
    distill_cli.add_parser(subparsers)
    return parser


def _start_on_loopback(model: str | None):
    from cloud.embedded import start_on_loopback  # the cloud's server stack: only when needed

    return start_on_loopback(model)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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

