"""Never slower under load (issue 19, case d): N hybrid sessions through the real edge loop on a
cloud already at capacity, against N cloud-only sessions, over an emulated link.

    python -m bench.never_slower_load --sessions 16 --rtt-ms 20,100 --max-tokens 64 --out DIR

`tandem bench --sessions` drives raw gRPC sessions with a lock-step load drafter; this drives
every hybrid session through EdgeEngine and SpeculativeRun, so each one measures and decides
whether drafting pays (edge/drafting_pays.py) and may let the cloud decode alone. N edges cannot
each get a core here, so the draft is a *scripted* DraftEngine: it proposes the target's own
greedy continuation (fetched once per prompt, cloud-only, alone) with each token corrupted at
--corrupt-rate, and takes --draft-ms per token (a sleep, off the event loop: N independent edge
devices). The cloud runs the default target alone on --cloud-cpus; this process, on
--edge-cpus, reaches it through the link relay. Every output is checked against the prompt's
output alone. Prints hybrid (switching), hybrid (drafting throughout: --no-cloud-decode) and
cloud-only aggregate tokens/s per RTT, and writes never_slower_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class ScriptedDrafter:
    """A DraftEngine (edge/draft_engine.py) that proposes a known continuation, corrupted at a rate."""

    def __init__(self, info, scripts: dict[tuple[int, ...], list[int]], corrupt_rate: float, draft_s: float):
        self.name = "scripted-load-drafter"
        self.vocab_size = info.vocab_size
        self.eos_token_ids = list(info.eos_token_ids)
        self.chat_template = ""
        self.fingerprint = info.tokenizer_fingerprint
        self.tokenizer = None
        self.n_ctx = 1 << 20
        self.scripts, self.corrupt_rate, self.draft_s = scripts, corrupt_rate, draft_s

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError("the load benchmark's prompts are token ids")

    def token_bytes(self, token_id: int) -> bytes:
        return b""

    def start(self, context: Sequence[int], reuse_prefix: bool = False) -> np.ndarray:
        return self.next_logits(context)

    def next_logits(self, context: Sequence[int]) -> np.ndarray:
        time.sleep(self.draft_s)
        logits = np.zeros(self.vocab_size, dtype=np.float32)
        logits[self._token(list(context))] = 20.0
        return logits

    def _token(self, context: list[int]) -> int:
        for index, (prompt, script) in enumerate(self.scripts.items()):
            if tuple(context[: len(prompt)]) == prompt:
                i = len(context) - len(prompt)
                on_track = i < len(script) and context[len(prompt):] == script[:i]
                if on_track and random.Random(i * 1_000_003 + index).random() >= self.corrupt_rate:
                    return script[i]
                return (script[i] + 1 + i) % self.vocab_size if i < len(script) else 0
        return 0

    def sibling(self) -> ScriptedDrafter:
        return self

    def close(self) -> None:
        pass


async def _answers(engine, prompts, sessions: int, max_tokens: int, mode) -> tuple[float, list]:
    from edge.engine import GenerationRequest

    requests = [GenerationRequest(prompts[i % len(prompts)], max_tokens) for i in range(sessions)]
    began = time.perf_counter()
    generations = await asyncio.gather(*(engine.generate_to_end(r, mode) for r in requests))
    return time.perf_counter() - began, generations


async def _bench(args, address: str, relay) -> dict:
    from bench.load import tokenized_prompts
    from bench.relay import LinkConfig
    from edge.client import CloudClient
    from edge.engine import EdgeEngine, GenerationRequest, Mode
    from edge.speculation_config import SpeculationConfig

    client = CloudClient(address)
    info = await client.info()
    prompts, _ = tokenized_prompts(None, info.to_pb(), args.prompts, 0)
    cloud_only = EdgeEngine(None, client)
    await cloud_only.connect()
    relay.set_config(LinkConfig(one_way_delay_s=0.0))
    references = [(await cloud_only.generate_to_end(GenerationRequest(p, args.max_tokens), Mode.CLOUD)).token_ids
                  for p in prompts]
    drafter = ScriptedDrafter(info, {tuple(p): r for p, r in zip(prompts, references)}, args.corrupt_rate,
                              args.draft_ms / 1000)
    engines = {
        "hybrid": EdgeEngine(drafter, client, SpeculationConfig(), draft_slots=args.sessions),
        "hybrid-drafting": EdgeEngine(drafter, client, SpeculationConfig(cloud_decode=False),
                                      draft_slots=args.sessions),
        "cloud": cloud_only,
    }
    for engine in engines.values():
        await engine.connect()
    rows = []
    for rtt in args.rtts_ms:
        relay.set_config(LinkConfig(one_way_delay_s=rtt / 2000))
        for name, engine in engines.items():
            mode = Mode.CLOUD if name == "cloud" else Mode.HYBRID
            wall, generations = await _answers(engine, prompts, args.sessions, args.max_tokens, mode)
            tokens = sum(len(g.token_ids) for g in generations)
            identical = sum(g.token_ids == references[i % len(prompts)] for i, g in enumerate(generations))
            row = {"rtt_ms": rtt, "mode": name, "sessions": args.sessions, "tokens_per_s": round(tokens / wall, 2),
                   "identical": identical, "cloud_decoded": sum(g.stats.cloud_decoded for g in generations),
                   "mode_switches": sum(g.stats.mode_switches for g in generations),
                   "drafted": sum(g.stats.drafted for g in generations),
                   "accepted": sum(g.stats.accepted for g in generations), "tokens": tokens,
                   "pays": [g.stats.pays for g in generations[:2]], "load_average": os.getloadavg()[0]}
            rows.append(row)
            print(f"rtt {rtt:g} ms {name:>16}: {row['tokens_per_s']:7.1f} tok/s, {identical}/{args.sessions} "
                  f"identical, cloud decoded {row['cloud_decoded']}/{tokens}, load {row['load_average']:.2f}",
                  file=sys.stderr, flush=True)
    await client.close()
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--rtt-ms", default="20,100")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--corrupt-rate", type=float, default=0.1)
    parser.add_argument("--draft-ms", type=float, default=15.0, help="draft time per token of each edge")
    parser.add_argument("--cloud-cpus", default="0")
    parser.add_argument("--edge-cpus", default="1")
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    args.rtts_ms = [float(x) for x in args.rtt_ms.split(",")]

    from bench.pin import parse_cpus
    from bench.processes import CloudProcess
    from bench.relay import RelayThread

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    extra = ["--max-sessions", str(args.sessions + 8)]
    cloud = CloudProcess(args.cloud_cpus, args.model, out / "cloud-never-slower.log", extra_args=extra)
    relay = RelayThread(cloud.address).start()
    try:
        os.sched_setaffinity(0, parse_cpus(args.edge_cpus))
        result = asyncio.run(_bench(args, f"127.0.0.1:{relay.port}", relay))
    finally:
        relay.stop()
        cloud.stop()
    by = {(r["rtt_ms"], r["mode"]): r for r in result["rows"]}
    print(f"\n{args.sessions} sessions, {args.max_tokens} tokens, corrupt rate {args.corrupt_rate}, "
          f"draft {args.draft_ms:g} ms/token; load average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print("RTT ms | tok/s hybrid  drafting-only  cloud | hybrid/cloud  drafting-only/cloud | cloud-decoded share")
    for rtt in args.rtts_ms:
        h, d, c = by[(rtt, "hybrid")], by[(rtt, "hybrid-drafting")], by[(rtt, "cloud")]
        print(f"{rtt:6g} | {h['tokens_per_s']:12.1f} {d['tokens_per_s']:14.1f} {c['tokens_per_s']:6.1f} | "
              f"{h['tokens_per_s'] / c['tokens_per_s']:12.2f} {d['tokens_per_s'] / c['tokens_per_s']:20.2f} | "
              f"{h['cloud_decoded'] / max(1, h['tokens']):.2f}")
    (out / "never_slower_load.json").write_text(json.dumps(
        {"command": "python -m bench.never_slower_load " + " ".join(argv or sys.argv[1:]),
         "load_average_start": load_start, "load_average_end": os.getloadavg(), **result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
