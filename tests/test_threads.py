"""Both engines size their thread pools from the CPUs the process may use, not the machine's.

A process is started pinned (bench.pin, as `tandem bench` starts its two sides) and loads the
tiny target (torch) and a tiny draft (llama.cpp) with threads=0, i.e. "decide yourself".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os, sys
import llama_cpp
import torch
from cloud.model import LoadOptions, TargetModel
from edge.llama_drafter import LlamaDrafter
TargetModel.load(sys.argv[1], LoadOptions(device="cpu", threads=0))
drafter = LlamaDrafter(sys.argv[2], n_ctx=256, threads=0)
print(json.dumps({"cpus": sorted(os.sched_getaffinity(0)), "torch": torch.get_num_threads(),
                  "llama": llama_cpp.llama_n_threads(drafter._llama.ctx),
                  "llama_batch": llama_cpp.llama_n_threads_batch(drafter._llama.ctx)}))
"""


def cpu_sets() -> list[list[int]]:
    available = sorted(os.sched_getaffinity(0))
    return [available[:1], available] if len(available) > 1 else [available]


@pytest.mark.parametrize("cpus", cpu_sets(), ids=lambda c: "cpus-" + "-".join(map(str, c)))
def test_thread_pools_follow_the_given_affinity(tiny_models, cpus):
    command = [sys.executable, "-m", "bench.pin", ",".join(map(str, cpus)), "--",
               sys.executable, "-c", PROBE, str(tiny_models.target_dir), str(tiny_models.drafts["exact"])]
    out = subprocess.run(command, capture_output=True, text=True, timeout=180, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["cpus"] == cpus
    assert seen["torch"] == seen["llama"] == seen["llama_batch"] == len(cpus)
