"""Wire modes side by side: ids-only (a) vs sparse q (b), same prompts, same seeds, one run.

    python -m bench.sampling_modes [--temperature 0.7 --top-p 0.9] [--sparse-top-k 4,8,16]

Loads the default model pair once (an embedded cloud on loopback, reached over real gRPC),
then generates every (prompt, seed) in every mode and prints, per mode: tokens per
verification round, the share of drafts accepted, and the serialized gRPC message bytes
per generated token each way. Both modes are exact, so they differ only in these costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

from cloud.embedded import start_on_loopback
from common.wire import DraftMode, SamplingParams
from edge.config import EdgeConfig
from edge.engine import GenerationRequest, Mode
from edge.open_engine import open_engine
from edge.speculation_config import SpeculationConfig

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain in three sentences why the sky is blue.",
    "Give me a recipe for a quick tomato pasta.",
    "What are the main differences between Python lists and tuples?",
    "Tell me a story about a robot who learns to paint.",
    "List five tips for staying focused while studying.",
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seeds", default="1,2", help="comma-separated; every prompt runs once per seed")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--sparse-top-k", default="8", help="comma-separated candidates sent per draft in mode (b)")
    parser.add_argument("--draft-tokens", type=int, default=SpeculationConfig().draft_tokens)
    parser.add_argument("--model", default=None, help="target (default: the default pair's)")
    parser.add_argument("--draft-model", default=None)
    parser.add_argument("--json-out", default=None, help="also write the totals to this JSON file")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, dict]:
    config = EdgeConfig(draft_model=args.draft_model, target_model=args.model, start_cloud=start_on_loopback)
    modes = [("ids (a)", DraftMode.TOKEN_IDS, 0)] + [
        (f"sparse top-{k} (b)", DraftMode.SPARSE_Q, int(k)) for k in args.sparse_top_k.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    totals = {name: dict(runs=0, tokens=0, rounds=0, drafted=0, accepted=0, bytes_sent=0, bytes_received=0,
                         elapsed_s=0.0) for name, _, _ in modes}
    async with open_engine(config) as engine:
        prompts = [engine.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
        for i, prompt in enumerate(prompts):
            for seed in seeds:
                for name, draft_mode, top_k in modes:
                    engine.config = SpeculationConfig(draft_tokens=args.draft_tokens, draft_top_k=top_k or 8)
                    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, seed)
                    request = GenerationRequest(prompt, args.max_tokens, sampling, draft_mode=draft_mode)
                    generation = await engine.generate_to_end(request, Mode.HYBRID)
                    s, total = generation.stats, totals[name]
                    total["runs"] += 1
                    for key in ("tokens", "rounds", "drafted", "accepted", "bytes_sent", "bytes_received"):
                        total[key] += getattr(s, key)
                    total["elapsed_s"] += s.elapsed_s
                print(f"  prompt {i + 1}/{len(prompts)}, seed {seed}: done", file=sys.stderr, flush=True)
    return totals


def table(totals: dict[str, dict]) -> str:
    header = f"{'mode':<20}{'tokens':>8}{'tok/round':>11}{'accepted':>10}{'B up/tok':>10}{'B down/tok':>12}" \
             f"{'B/tok':>8}{'tok/s':>8}"
    lines = [header, "-" * len(header)]
    for name, t in totals.items():
        tokens = max(t["tokens"], 1)
        lines.append(
            f"{name:<20}{t['tokens']:>8}{t['tokens'] / max(t['rounds'], 1):>11.2f}"
            f"{t['accepted'] / max(t['drafted'], 1):>10.1%}{t['bytes_sent'] / tokens:>10.1f}"
            f"{t['bytes_received'] / tokens:>12.1f}{(t['bytes_sent'] + t['bytes_received']) / tokens:>8.1f}"
            f"{t['tokens'] / max(t['elapsed_s'], 1e-9):>8.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    started = time.monotonic()
    totals = asyncio.run(run(args))
    print(f"temperature {args.temperature}, top-k {args.top_k}, top-p {args.top_p}, {len(PROMPTS)} chat prompts x "
          f"seeds {args.seeds}, up to {args.max_tokens} tokens, {args.draft_tokens} drafts per block, lock-step "
          f"({time.monotonic() - started:.0f}s)")
    print(table(totals))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "totals": totals}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
