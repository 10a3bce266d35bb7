"""The real default pair (SmolLM2-135M-Instruct: Q4_1 GGUF draft, fp32 transformers target)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import hf_greedy
from test_speculative_exact import run_generation

pytestmark = pytest.mark.slow

PROMPTS = [
    "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nExplain what a hash table is.<|im_end|>\n<|im_start|>assistant\n",
    "def quicksort(items):\n",
]


@pytest.fixture(scope="module")
def default_pair():
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from cloud.model import LoadOptions, TargetModel
    from edge.llama_drafter import LlamaDrafter

    target = TargetModel.load(None, LoadOptions(device="cpu", threads=1))
    drafter = LlamaDrafter(threads=1)
    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0), model=target) as cloud:
        yield cloud, target, drafter
    drafter.close()


@pytest.mark.parametrize("max_in_flight", [1, 2])
def test_default_pair_greedy_equals_target_generate(default_pair, max_in_flight):
    cloud, target, drafter = default_pair
    assert drafter.fingerprint == target.fingerprint
    total_rounds = total_tokens = 0
    for text in PROMPTS:
        prompt = drafter.tokenize(text)
        generation = asyncio.run(run_generation(cloud.address, drafter, prompt, max_new_tokens=48,
                                                draft_tokens=6, max_in_flight=max_in_flight))
        assert generation.token_ids == hf_greedy(target, prompt, 48)
        total_rounds += generation.stats.rounds
        total_tokens += generation.stats.tokens
    # Same weights, Q4_1 vs fp32: most drafts are accepted, so rounds are a fraction of tokens.
    assert total_rounds < total_tokens / 2
