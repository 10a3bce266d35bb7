"""What produced a benchmark figure: commit, dtype, thread counts and the machine's load.

Every `tandem bench` JSON carries `provenance()` and every table starts with `header()`, so
a figure copied into the README can be traced to the code and the conditions that gave it.
"""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent.parent


def code_version() -> dict:
    """The commit of the code running (with '-dirty' when tracked files differ from it), and
    the installed package's version; either is None when unknown (no git, not installed)."""
    commit = None
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(_SOURCE), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        if git("status", "--porcelain", "--untracked-files=no"):
            commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        version = metadata.version("tandem")
    except metadata.PackageNotFoundError:
        version = None
    return {"commit": commit, "version": version}


def provenance(version: dict, dtype: str | None, torch_threads: int | None, llama_cpp_threads: int | None,
               load_average_start: tuple[float, ...]) -> dict:
    """The stamp of one run: `version` is code_version() read when the run began; call this when
    the run has ended (it reads the load average then).

    llama_cpp_threads is None where no llama.cpp model ran (the load benchmark's drafter is
    scripted); dtype is the cloud's weights dtype as it reported it (e.g. float32).
    """
    return version | {"dtype": dtype, "cloud_torch_threads": torch_threads,
                             "edge_llama_cpp_threads": llama_cpp_threads,
                             "load_average_start": list(load_average_start),
                             "load_average_end": list(os.getloadavg())}


def header(title: str, stamp: dict) -> str:
    """One line naming what produced the table below it."""
    code = stamp["commit"] or f"version {stamp['version'] or 'unknown'}"
    llama = stamp["edge_llama_cpp_threads"]
    load = f"{stamp['load_average_start'][0]:.2f} -> {stamp['load_average_end'][0]:.2f}"
    return (f"{title} | commit {code} | dtype {stamp['dtype'] or 'unknown'} | torch threads "
            f"{stamp['cloud_torch_threads'] or 'unknown'} | llama.cpp threads "
            f"{llama if llama is not None else 'none (no llama.cpp model)'} | load average {load}")
