"""The capacity benchmark's check with real drafters: a few llama.cpp edges among the load drafters.

The capacity search drives hybrid sessions with the load drafter (bench/load.py), which drafts
instantly at a stated acceptance. This check keeps the cloud at its measured hybrid capacity,
but with `count` of those sessions replaced by real edges (bench/worker.py: a llama.cpp draft
model, the real EdgeEngine with its adaptive blocks and pipelining), each over its own emulated
link, and reports whether those real sessions still meet the service level and whether their
outputs are the prompt's output alone. The edges share the client CPUs with the load sessions,
so their drafting is slower than on a device of their own: a conservative check.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.capacity import Links, ServiceLevel, measure_sessions
from bench.load import Load, compare
from bench.prompts import PROMPTS


async def real_drafters_check(load: Load, address: tuple[str, int], rtt_ms: float, capacity: int, count: int,
                              level: ServiceLevel, edge_cpus: str, edge_args: list[str], out: Path) -> dict:
    """`count` real edges and capacity - count load sessions at once; the real edges' figures."""
    from bench.processes import EdgeWorker
    from bench.relay import LinkConfig, RelayThread

    count = min(count, capacity)
    relays = [RelayThread(address, LinkConfig(one_way_delay_s=rtt_ms / 2000)).start() for _ in range(count)]
    workers = []
    try:
        for i, relay in enumerate(relays):
            workers.append(await asyncio.to_thread(
                EdgeWorker, edge_cpus, f"127.0.0.1:{relay.port}", edge_args, out / f"edge-real-drafter-{i}.log"))
        links = Links(address, rtt_ms)
        try:
            others = measure_sessions(load, links, "hybrid", capacity - count) if capacity > count else _nothing()
            # The worker wraps PROMPTS[i] in the chat template as bench/load.py's prompts[i] is.
            runs = [asyncio.to_thread(w.generate, "hybrid", PROMPTS[i % len(load.prompts)], load.max_tokens)
                    for i, w in enumerate(workers)]
            results = await asyncio.gather(others, *runs)
        finally:
            await links.close()
    finally:
        for worker in workers:
            worker.stop()
        for relay in relays:
            relay.stop()
    real = results[1:]
    rates = [(r["stats"]["tokens"] - 1) / (r["stats"]["elapsed_s"] - r["stats"]["ttft_s"]) for r in real
             if r["stats"]["tokens"] > 1 and r["stats"]["elapsed_s"] > r["stats"]["ttft_s"]]
    ttfts = [r["stats"]["ttft_s"] for r in real]
    identical = sum(compare(r["token_ids"], load.references[i % len(load.prompts)])["first_difference"] is None
                    for i, r in enumerate(real))
    return {"sessions": capacity, "real_drafters": count, "rtt_ms": rtt_ms,
            "real_tokens_per_s": [round(x, 2) for x in rates], "real_ttft_s": [round(x, 3) for x in ttfts],
            "real_acceptance": [round(r["stats"]["accepted"] / max(1, r["stats"]["drafted"]), 3) for r in real],
            "real_identical_to_alone": identical,
            "met": bool(rates) and min(rates) >= level.min_p10_tokens_per_s and max(ttfts) <= level.max_p90_ttft_s,
            "load_sessions": results[0].to_json(level) if results[0] is not None else None}


async def _nothing():
    return None
