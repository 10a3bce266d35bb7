"""Every command documents itself: `tandem --help`, `tandem COMMAND --help` and the bench programs."""

import argparse
import subprocess
import sys

import pytest

from tandem.cli import build_parser


def subcommands() -> list[str]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_tandem_help_lists_every_command():
    result = run("-m", "tandem", "--help")
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in subcommands())


@pytest.mark.parametrize("command", subcommands())
def test_each_command_has_help(command):
    result = run("-m", "tandem", command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: tandem {command}")


@pytest.mark.parametrize("program", ["sampling_modes", "serve_figures", "security", "hf_draft", "cuda_check",
                                     "h2_window_updates", "concurrent_chats", "bisect_load"])
def test_each_bench_program_has_help(program):
    result = run("-m", f"bench.{program}", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


LIGHT = """
import atexit, sys
atexit.register(lambda: print(sorted({m.split(".")[0] for m in sys.modules} & HEAVY), file=sys.stderr))
from tandem.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args", [["--help"], ["health", "--help"], ["health", "--cloud", "127.0.0.1:1",
                                                                      "--timeout", "1"]])
def test_help_and_health_load_no_engine(args):
    """`tandem --help` and `tandem health` start fast: no numpy, edge, engine or HTTP server (issue 25)."""
    heavy = {"numpy", "torch", "transformers", "llama_cpp", "aiohttp", "tokenizers", "edge", "bench", "distill"}
    result = run("-c", LIGHT.replace("HEAVY", repr(heavy)), *args)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr
