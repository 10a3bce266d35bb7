"""The property that matters most: greedy hybrid output is the target's own greedy output.

Drafts that differ from the target make rejections happen at many positions (0 accepted,
some accepted, all accepted); lock-step and pipelined loops must both stay exact.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from conftest import hf_greedy

from common.wire import FinishReason
from edge.client import CloudClient
from edge.engine import EdgeEngine, GenerationRequest, Mode
from edge.speculation_config import SpeculationConfig

PROMPTS = [
    "The quick brown fox",
    "def fibonacci(n):\n    return",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]
NEW_TOKENS = 40


async def run_generation(address, drafter, prompt_ids, mode=Mode.HYBRID, max_new_tokens=NEW_TOKENS, **config):
    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, SpeculationConfig(**config))
        await engine.connect()
        return await engine.generate_to_end(GenerationRequest(prompt_ids, max_new_tokens), mode)
    finally:
        await client.close()


@pytest.mark.parametrize("draft", ["exact", "noisy", "wild"])
@pytest.mark.parametrize("draft_tokens,max_in_flight", [(1, 1), (4, 1), (6, 2), (3, 3)])
def test_greedy_hybrid_equals_target_generate(tiny_cloud, tiny_target, tiny_drafter, draft, draft_tokens,
                                              max_in_flight):
    drafter = tiny_drafter(draft)
    outcomes = Counter()
    for text in PROMPTS:
        prompt = drafter.tokenize(text)
        # Block length and depth pinned (not chosen from timing), so which rejections happen is
        # the same on every run; tests/test_pipelined_relay.py covers the adaptive policy.
        generation = asyncio.run(run_generation(tiny_cloud.address, drafter, prompt, draft_tokens=draft_tokens,
                                                max_in_flight=max_in_flight, adaptive=False))
        assert generation.token_ids == hf_greedy(tiny_target, prompt, NEW_TOKENS)
        for drafted, accepted in generation.stats.verified_blocks:
            if drafted:
                outcomes["none" if accepted == 0 else "all" if accepted == drafted else "some"] += 1
    if draft == "noisy":
        # Rejections really happen, at the first draft and later, and whole blocks pass too.
        assert outcomes["none"] > 0 and outcomes["all"] > 0
        if draft_tokens > 2:
            assert outcomes["some"] > 0
    if draft == "exact":
        assert outcomes["none"] + outcomes["some"] <= len(PROMPTS)


def test_cloud_mode_equals_target_generate(tiny_cloud, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPTS[0])
    generation = asyncio.run(run_generation(tiny_cloud.address, drafter, prompt, mode=Mode.CLOUD))
    assert generation.token_ids == hf_greedy(tiny_target, prompt, NEW_TOKENS)
    assert generation.stats.cloud_forward_passes == generation.stats.rounds == len(generation.token_ids)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7])
def test_short_budgets_stop_exactly(tiny_cloud, tiny_target, tiny_drafter, max_new_tokens):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPTS[1])
    generation = asyncio.run(run_generation(tiny_cloud.address, drafter, prompt, max_new_tokens=max_new_tokens,
                                            draft_tokens=4, max_in_flight=2))
    assert generation.token_ids == hf_greedy(tiny_target, prompt, max_new_tokens)
    assert generation.finish_reason == FinishReason.LENGTH


@pytest.mark.parametrize("max_in_flight", [1, 3])
def test_stats_are_consistent(tiny_cloud, tiny_drafter, max_in_flight):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPTS[2])
    generation = asyncio.run(run_generation(tiny_cloud.address, drafter, prompt, draft_tokens=5,
                                            max_in_flight=max_in_flight))
    s = generation.stats
    assert s.tokens == len(generation.token_ids) == NEW_TOKENS
    assert s.cloud_forward_passes == s.rounds  # every round is exactly one forward pass
    # the prefill round, one per verified block, one per step the cloud decoded alone (drafting did not pay),
    # each committing its own token and any of the draft's guesses it confirmed
    assert s.rounds == len(s.verified_blocks) + 1 + s.cloud_decoded - s.hinted
    assert 0 <= s.accepted <= s.drafted
    assert s.accepted == sum(accepted for _, accepted in s.verified_blocks)
    assert s.drafted == sum(drafted for drafted, _ in s.verified_blocks)
    assert s.tokens <= s.rounds + s.accepted + s.hinted  # each round: its accepted drafts or guesses, plus one token
    assert s.tokens >= s.rounds  # and at least one token
    assert s.bytes_sent > 0 and s.bytes_received > 0
    assert 0 < s.ttft_s <= s.elapsed_s
    if max_in_flight == 1:
        assert s.stale_drafted == 0
