"""The cloud's prefix cache: repeated prompts skip the model, and no output changes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from conftest import hf_greedy
from test_sampled_exact import generate_many

from cloud.prefix_cache import PrefixCache
from edge.engine import Mode

PROMPT = "The quick brown fox"
SEEDS = range(1, 41)


@pytest.fixture(scope="module")
def cached_cloud(tiny_target):
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=64), model=tiny_target) as cloud:
        yield cloud


def prefix_cache(cloud) -> PrefixCache:
    return cloud.running.service.prefix_cache


@pytest.mark.parametrize("mode", [Mode.HYBRID, Mode.CLOUD])
def test_sampling_many_completions_of_one_prompt_reuses_the_cache_and_changes_nothing(cached_cloud, tiny_cloud,
                                                                                     tiny_drafter, mode):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    sampling = dict(temperature=1.0, top_k=0, top_p=0.95, max_new_tokens=2, mode=mode)
    cache = prefix_cache(cached_cloud)
    hits_before = cache.hits
    cached = asyncio.run(generate_many(cached_cloud.address, drafter, prompt, SEEDS, **sampling))
    cold = asyncio.run(generate_many(tiny_cloud.address, drafter, prompt, SEEDS, **sampling))
    assert [run.token_ids for run in cached] == [run.token_ids for run in cold]  # bit-exact snapshots
    assert len({tuple(run.token_ids) for run in cached}) > 1  # the completions really vary
    # Every session after the first finds the prompt, and most find their first step too.
    assert cache.hits - hits_before >= len(SEEDS) - 1 + len(SEEDS) // 2


def test_greedy_output_is_the_target_s_with_the_cache_warm(cached_cloud, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize("def fibonacci(n):")
    reference = hf_greedy(tiny_target, prompt, 20)
    for mode in (Mode.HYBRID, Mode.CLOUD, Mode.HYBRID):
        run = asyncio.run(generate_many(cached_cloud.address, drafter, prompt, [0], temperature=0.0,
                                        max_new_tokens=20, mode=mode, draft_tokens=4))[0]
        assert run.token_ids == reference


def test_a_long_generation_adds_at_most_one_snapshot_beyond_the_shared_prefix(cached_cloud, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize("A prompt used by this test only")
    cache = prefix_cache(cached_cloud)
    entries_before = len(cache)
    seeds = range(100, 105)
    asyncio.run(generate_many(cached_cloud.address, drafter, prompt, seeds, temperature=1.0, top_k=0,
                              max_new_tokens=12, mode=Mode.CLOUD))
    # The prompt, then at most one first step per later session; none of the 11 later steps.
    assert len(cache) - entries_before <= len(seeds)


class Held:
    """Stands in for a snapshot's block table: counts its release."""

    def __init__(self):
        self.released = 0

    def release(self):
        self.released += 1


def test_least_recently_used_snapshots_go_first_and_memory_stays_bounded():
    logits = np.zeros(10, dtype=np.float32)
    per_entry = 4 * 100 + logits.nbytes
    cache = PrefixCache(max_bytes=3 * per_entry, kv_bytes_per_token=100)
    held = {key: Held() for key in ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16))}
    for key in list(held)[:3]:
        cache.put(key, held[key], logits)
    assert cache.get([1, 2, 3, 4]) is not None  # now the most recently used
    cache.put([13, 14, 15, 16], held[(13, 14, 15, 16)], logits)
    assert cache.get([5, 6, 7, 8]) is None and cache.get([1, 2, 3, 4]) is not None
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert [h.released for h in held.values()] == [0, 1, 0, 0]  # the evicted snapshot's blocks are freed
    too_big = Held()
    cache.put(list(range(1000)), too_big, logits)  # larger than the whole budget: not kept
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes and too_big.released == 1
