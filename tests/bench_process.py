"""`tandem bench` as a real process on the tiny models, its cloud and its edge on two CPUs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def pinned_bench(*flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `tandem bench FLAGS --cloud-cpus A --edge-cpus B`; skips where the machine lends one CPU."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        pytest.skip("tandem bench pins the cloud and the edge to different CPUs; this machine lends one")
    command = [sys.executable, "-m", "tandem", "bench", *flags,
               "--cloud-cpus", str(available[0]), "--edge-cpus", str(available[1])]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
