"""A draft given as an HF directory (converted F16 / F32) next to the default Q4_1 GGUF, in one run.

    python -m bench.hf_draft HF_DIR [--max-tokens 64]

HF_DIR is a LlamaForCausalLM directory that also serves as the target, e.g. the cloud's cached
safetensors copy of the default model (~/.cache/tandem/targets/SmolLM2-135M-Instruct.Q4_1-*).
Conversions go to a fresh temporary cache, so their time is measured. For each draft it prints
the conversion time and size, edge-alone speed, and hybrid acceptance and speed on the same
prompts, and checks every hybrid output against the cloud-only output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Give me three tips for writing clear code.",
    "Explain what a hash map is in two sentences.",
    "Write a haiku about the sea.",
    "What is the capital of France, and why is it famous?",
]


async def run(draft, draft_dtype: str, address: str, mode: str, max_tokens: int) -> list[dict]:
    from edge.config import EdgeConfig
    from edge.sdk import AsyncTandemClient

    config = EdgeConfig(cloud=address, draft_model=draft, draft_dtype=draft_dtype)
    results = []
    async with AsyncTandemClient(config=config, mode=mode) as tandem:
        for prompt in PROMPTS:
            completion = await tandem.complete(prompt, max_tokens=max_tokens, chat=True)
            results.append({"ids": completion.token_ids, **completion.stats})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_dir", type=Path)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as cache:
        os.environ["TANDEM_CACHE_DIR"] = cache
        return bench(args.hf_dir, args.max_tokens)


def bench(hf_dir: Path, max_tokens: int) -> int:
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from common.model_paths import default_gguf_path
    from edge.convert import cached_gguf
    from edge.llama_drafter import tokenize_with_vocab

    drafts = {"Q4_1 GGUF (default)": (None, "f16", default_gguf_path().stat().st_size, 0.0)}
    for dtype in ("f16", "f32"):
        started = time.monotonic()
        path = cached_gguf(hf_dir, tokenize_gguf=tokenize_with_vocab, dtype=dtype)
        drafts[f"HF dir -> {dtype.upper()}"] = (str(hf_dir), dtype, path.stat().st_size,
                                                time.monotonic() - started)

    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, model=str(hf_dir))) as cloud:
        return asyncio.run(compare(drafts, hf_dir.name, cloud.address, max_tokens))


async def compare(drafts: dict, target_name: str, address: str, max_tokens: int) -> int:
    """One event loop for every run: grpc.aio binds its poller to the first loop it meets."""
    reference = await run(None, "f16", address, "cloud", max_tokens)
    cloud_tps = statistics.mean(r["tokens_per_s"] for r in reference)
    print(f"target {target_name}, {len(PROMPTS)} chat prompts x {max_tokens} tokens, "
          f"cloud-only {cloud_tps:.1f} tok/s")
    print(f"{'draft':22} {'MB':>6} {'convert s':>9} {'edge tok/s':>10} {'accepted':>9} "
          f"{'tok/round':>9} {'hybrid tok/s':>12} {'vs cloud':>8}  exact")
    for label, (draft, dtype, size, convert_s) in drafts.items():
        edge = await run(draft, dtype, address, "edge", max_tokens)
        hybrid = await run(draft, dtype, address, "hybrid", max_tokens)
        accepted = sum(r["accepted"] for r in hybrid) / max(1, sum(r["drafted"] for r in hybrid))
        per_round = sum(r["tokens"] for r in hybrid) / sum(r["rounds"] for r in hybrid)
        hybrid_tps = statistics.mean(r["tokens_per_s"] for r in hybrid)
        exact = all(h["ids"] == c["ids"] for h, c in zip(hybrid, reference))
        print(f"{label:22} {size / 1e6:6.0f} {convert_s:9.1f} "
              f"{statistics.mean(r['tokens_per_s'] for r in edge):10.1f} {accepted:9.1%} {per_round:9.2f} "
              f"{hybrid_tps:12.1f} {hybrid_tps / cloud_tps:7.2f}x  {exact}")
        if not exact:
            return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
