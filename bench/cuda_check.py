"""Checks a CUDA target: hybrid greedy output equals transformers' generate on the same GPU model.

Run on a host with a GPU (no weights needed: it builds the tiny test models):
    python -m bench.cuda_check --work /tmp/cuda-check
The cloud runs on CUDA (embedded, real gRPC on loopback); the draft runs in llama.cpp on the CPU.
Prints one JSON object: per dtype, whether every hybrid run matched, and verification latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

PROMPTS = ["The quick brown fox", "def fibonacci(n):\n    return", "Once upon a time, in a land far away,"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tandem-cuda-check"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()

    import torch
    from bench.tiny_models import build_tiny_target, hf_greedy, hf_to_gguf, smollm2_tokenizer_dir
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from cloud.model import LoadOptions, TargetModel
    from edge.llama_drafter import LlamaDrafter

    args.work.mkdir(parents=True, exist_ok=True)
    target_dir = build_tiny_target(args.work / "target", smollm2_tokenizer_dir(args.work), seed=0)
    draft_path = hf_to_gguf(target_dir, args.work / "draft-noisy.gguf", noise=0.05, noise_seed=1)
    drafter = LlamaDrafter(draft_path, n_ctx=1024, f32_cache=True)
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
              "torch": torch.__version__, "runs": {}}
    for dtype in ("float32", "bfloat16"):
        target = TargetModel.load(str(target_dir), LoadOptions(device=args.device, dtype=dtype))
        target.warmup()
        runs = []
        with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0), model=target) as cloud:
            for text in PROMPTS:
                prompt = drafter.tokenize(text)
                reference = hf_greedy(target, prompt, args.tokens)
                for draft_tokens, in_flight in ((4, 1), (6, 2)):
                    gen = asyncio.run(run_generation(cloud.address, drafter, prompt, max_new_tokens=args.tokens,
                                                     draft_tokens=draft_tokens, max_in_flight=in_flight))
                    same = next((i for i, (a, b) in enumerate(zip(gen.token_ids, reference)) if a != b),
                                min(len(gen.token_ids), len(reference)))
                    runs.append({"prompt": text[:20], "draft_tokens": draft_tokens, "in_flight": in_flight,
                                 "identical": gen.token_ids == reference, "first_difference": same,
                                 "tokens_per_round": round(gen.stats.tokens / gen.stats.rounds, 2)})
        report["runs"][dtype] = {"all_identical": all(r["identical"] for r in runs), "runs": runs,
                                 "verify_ms": _verify_latency(target)}
        del target
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(json.dumps(report, indent=1))
    return 0 if report["runs"]["float32"]["all_identical"] else 1


async def run_generation(address: str, drafter, prompt_ids: list[int], max_new_tokens: int, **speculation):
    """One greedy hybrid generation through a real EdgeEngine and CloudClient."""
    from edge.client import CloudClient
    from edge.engine import EdgeEngine, GenerationRequest, Mode
    from edge.speculation_config import SpeculationConfig

    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, SpeculationConfig(**speculation))
        await engine.connect()
        return await engine.generate_to_end(GenerationRequest(prompt_ids, max_new_tokens), Mode.HYBRID)
    finally:
        await client.close()


def _verify_latency(target) -> dict:
    """Median wall time of one verification pass (block of k tokens on a 64-token cache)."""
    import torch

    from cloud.model import Segment

    pool = target.new_kv_pool()
    out = {}
    for k in (1, 4, 8, 16):
        times = []
        for _ in range(20):
            table = pool.new_table()
            target.forward_batch(pool, [Segment(table, list(range(10, 74)), 1)])
            if target.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            target.forward_batch(pool, [Segment(table, list(range(100, 100 + k)), k)])[0].numpy()  # waits for it
            times.append(time.perf_counter() - start)
            table.release()
        out[f"k={k}"] = round(sorted(times)[len(times) // 2] * 1000, 2)
    return out


if __name__ == "__main__":
    sys.exit(main())
