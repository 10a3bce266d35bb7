"""Two chat answers at once vs one, hybrid, through one edge runtime (what `tandem serve` runs).

    python -m bench.concurrent_chats [--slots 1,2] [--max-tokens 96] [--cloud-cpus 0 --edge-cpus 1]

Starts `tandem cloud` pinned to --cloud-cpus, pins this process (the edge) to --edge-cpus, and
for each --draft-slots value times each of two answers alone, then both started together.
Prints the wall times, `together / longest alone` (1.0: no slower than one alone) and
`together / sum alone` (1.0: they queued). Fallback is off: every answer is the cloud's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.pin import parse_cpus
from bench.processes import CloudProcess
from edge.config import EdgeConfig
from edge.fallback import FallbackConfig
from edge.sdk import AsyncTandemClient

QUESTIONS = ["Give me three tips for writing clear code.", "Describe the water cycle in detail."]


async def timed(tandem: AsyncTandemClient, questions: list[str], max_tokens: int) -> tuple[float, list[int]]:
    started = time.monotonic()
    answers = await asyncio.gather(*(tandem.complete(q, max_tokens=max_tokens, chat=True) for q in questions))
    return time.monotonic() - started, [len(a.token_ids) for a in answers]


async def measure(address: str, slots: int, max_tokens: int) -> dict:
    config = EdgeConfig(cloud=address, draft_slots=slots, fallback=FallbackConfig(enabled=False))
    async with AsyncTandemClient(config=config) as tandem:
        await timed(tandem, QUESTIONS, 8)  # warm up: both draft contexts exist, caches are hot
        alone = [await timed(tandem, [q], max_tokens) for q in QUESTIONS]
        together, tokens = await timed(tandem, QUESTIONS, max_tokens)
    alone_s = [seconds for seconds, _ in alone]
    return {"draft_slots": slots, "alone_s": [round(t, 2) for t in alone_s], "together_s": round(together, 2),
            "tokens": tokens, "together_over_longest_alone": round(together / max(alone_s), 2),
            "together_over_sum_alone": round(together / sum(alone_s), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", default="1,2")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--cloud-cpus", default="0")
    parser.add_argument("--edge-cpus", default="1")
    args = parser.parse_args()
    load = os.getloadavg()
    cloud = CloudProcess(args.cloud_cpus, None, Path(tempfile.mkdtemp()) / "cloud.log")
    try:
        os.sched_setaffinity(0, parse_cpus(args.edge_cpus))
        address = f"{cloud.address[0]}:{cloud.address[1]}"
        rows = [asyncio.run(measure(address, int(s), args.max_tokens)) for s in args.slots.split(",")]
    finally:
        cloud.stop()
    print(json.dumps({"rows": rows, "load_average_start": load, "load_average_end": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
