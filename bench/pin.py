"""Run a command pinned to some CPUs: `python -m bench.pin 0,2-3 -- COMMAND ...`.

The affinity is set in this process and then inherited through exec, so the command starts
already pinned and sizes its thread pools from it (torch and llama.cpp read
os.sched_getaffinity). Spawning through this, not Popen(preexec_fn=...), stays safe while the
parent runs threads.
"""

from __future__ import annotations

import os
import sys

from common.errors import InvalidArgument


def parse_cpus(text: str) -> set[int]:
    """'0', '0,2' or '0-3,6' -> a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"not a CPU list: {text!r} (expected e.g. 0 or 0,2-3)")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def disjoint_cpus(cloud_cpus: str, edge_cpus: str) -> tuple[set[int], set[int]]:
    """--cloud-cpus and --edge-cpus parsed and checked: disjoint (two machines), and ours to use."""
    try:
        cloud, edge = parse_cpus(cloud_cpus), parse_cpus(edge_cpus)
    except ValueError as exc:
        raise InvalidArgument(f"{exc}") from None
    available = os.sched_getaffinity(0)
    if cloud & edge:
        raise InvalidArgument(f"--cloud-cpus and --edge-cpus overlap ({sorted(cloud & edge)}); "
                              "the two sides emulate two machines")
    if not (cloud | edge) <= available:
        raise InvalidArgument(f"CPUs {sorted((cloud | edge) - available)} are not available "
                              f"(this process may use {sorted(available)})")
    return cloud, edge


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python -m bench.pin CPUS -- COMMAND [ARGS...]")
    os.sched_setaffinity(0, parse_cpus(argv[0]))
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
