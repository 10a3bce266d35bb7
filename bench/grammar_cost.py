"""Cost of the grammar mask in the cloud: time per token of cloud-only decoding (the cloud's work
alone: one forward pass per token) with a JSON Schema ÷ without, on the default target.

    python -m bench.grammar_cost [--tokens 48] [--threads 1]

Both runs force the same number of tokens (the schema's answer is cut by max tokens too) so
the ratio is per token; the two are interleaved, best of --repeats each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from cloud.config import CloudConfig
from cloud.embedded import EmbeddedCloud
from cloud.model import LoadOptions, TargetModel
from common.grammar import json_schema_grammar
from common.wire import GenerateRequest
from edge.client import CloudClient

SCHEMA = {"type": "object", "properties": {"notes": {"type": "array", "items": {"type": "string"}}},
          "required": ["notes"], "additionalProperties": False}
PROMPT = "<|im_start|>user\nWrite notes about the sea as JSON.<|im_end|>\n<|im_start|>assistant\n"


def _mask_ms(target, grammar: str, answer: list[int]) -> float:
    """The mask's own time per token (sync + mask + apply to a [vocab] row), replayed along `answer`."""
    import numpy as np

    from common.grammar import GrammarMask, llg_tokenizer

    mask = GrammarMask(grammar, llg_tokenizer(target.text, target.vocab_size), target.vocab_size)
    row = np.random.default_rng(0).standard_normal(target.vocab_size).astype(np.float32)
    started = time.perf_counter()
    for i in range(len(answer)):
        mask.masked_after(answer[:i], row)
    return (time.perf_counter() - started) / max(1, len(answer)) * 1e3


async def _per_token(address: str, prompt: list[int], tokens: int, grammar: str):
    client = CloudClient(address)
    try:
        request = GenerateRequest(prompt_token_ids=prompt, max_new_tokens=tokens, grammar=grammar,
                                  stop_token_ids=[])
        stream = client.generate(request)
        got, first_at, ids = 0, None, []
        async for step in stream:
            if step.token_id is None:
                continue
            got += 1
            ids.append(step.token_id)
            if first_at is None:
                first_at = time.perf_counter()  # after the prefill: time the decoding steps only
        return (time.perf_counter() - first_at) / max(1, got - 1), ids
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    target = TargetModel.load(None, LoadOptions(device="cpu", threads=args.threads))
    prompt = target.tokenize(PROMPT)
    grammar = json_schema_grammar(SCHEMA)
    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=target) as cloud:
        best = {"plain": float("inf"), "schema": float("inf")}
        counts = {}
        for _ in range(args.repeats):
            for name, g in (("plain", ""), ("schema", grammar)):
                seconds, ids = asyncio.run(_per_token(cloud.address, prompt, args.tokens, g))
                best[name], counts[name] = min(best[name], seconds), len(ids)
                if g:
                    answer = ids
        mask_ms = min(_mask_ms(target, grammar, answer) for _ in range(args.repeats))
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(json.dumps({"ms_per_token": {k: round(v * 1e3, 2) for k, v in best.items()}, "tokens": counts,
                      "mask_ms_per_token": round(mask_ms, 3),
                      "ratio": round(best["schema"] / best["plain"], 3), "threads": args.threads, "loadavg": load}))


if __name__ == "__main__":
    main()
