"""Pipelined, adaptive hybrid generation over a delayed link stays exactly the target's.

The tiny cloud is reached through the link relay (bench/relay.py) adding a few ms of delay
and jitter, so verdicts arrive while the edge is drafting ahead: several blocks are in flight,
rejections invalidate them on both sides, and the output must still be the target's own.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from conftest import hf_greedy
from test_speculative_exact import PROMPTS

from bench.relay import LinkConfig, RelayThread
from common.wire import SamplingParams
from edge.client import CloudClient
from edge.engine import EdgeEngine, Generation, GenerationRequest, Mode
from edge.speculation_config import SpeculationConfig

NEW_TOKENS = 40
LINK = LinkConfig(one_way_delay_s=0.004, jitter_s=0.002, seed=7)


@pytest.fixture(scope="module")
def relay(tiny_cloud):
    host, port = tiny_cloud.address.rsplit(":", 1)
    with RelayThread((host, int(port)), LINK) as relay:
        yield relay


async def generate(address: str, drafter, prompt_ids, config: SpeculationConfig, mode=Mode.HYBRID,
                   sampling=SamplingParams(), max_new_tokens=NEW_TOKENS) -> Generation:
    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, config)
        await engine.connect()
        generation = Generation(mode)
        request = GenerationRequest(prompt_ids, max_new_tokens, sampling)
        async for _ in engine.generate(request, mode, generation):
            pass
        return generation
    finally:
        await client.close()


CONFIGS = {
    # adaptive length and depth, as shipped, drafting throughout (tests/test_never_slower.py covers the
    # switch to the cloud decoding alone, which a weak draft over this delayed link would make)
    "default": SpeculationConfig(cloud_decode=False),
    "deep-fixed": SpeculationConfig(draft_tokens=3, max_in_flight=4, adaptive=False),  # many stale blocks
}


@pytest.mark.parametrize("config", CONFIGS, ids=list(CONFIGS))
@pytest.mark.parametrize("draft", ["exact", "noisy", "wild"])
def test_pipelined_greedy_over_delayed_link_equals_target(relay, tiny_target, tiny_drafter, draft, config):
    drafter = tiny_drafter(draft)
    outcomes, reject_offsets, stale, peak = Counter(), set(), 0, 0
    for text in PROMPTS:
        prompt = drafter.tokenize(text)
        generation = asyncio.run(generate(f"127.0.0.1:{relay.port}", drafter, prompt, CONFIGS[config]))
        assert generation.token_ids == hf_greedy(tiny_target, prompt, NEW_TOKENS)
        s = generation.stats
        assert s.cloud_forward_passes == s.rounds  # stale blocks cost no forward pass
        assert s.rounds == len(s.verified_blocks) + 1
        stale += s.stale_drafted
        peak = max(peak, s.peak_in_flight)
        for drafted, accepted in s.verified_blocks:
            if drafted:
                outcomes["none" if accepted == 0 else "all" if accepted == drafted else "some"] += 1
            if accepted < drafted:
                reject_offsets.add(accepted)
    assert peak > 1, "verdicts were always back before the next block: nothing was pipelined"
    if draft == "noisy":
        assert outcomes["none"] and outcomes["all"]  # rejected at the first draft, and whole blocks pass
        if config == "deep-fixed":
            assert outcomes["some"] and len(reject_offsets) >= 2  # rejections at several offsets
            assert stale > 0  # blocks drafted before a rejection was known were invalidated
    if draft == "exact":
        assert stale == 0


def test_sampled_pipelined_hybrid_equals_cloud_only(relay, tiny_drafter):
    """Ids-only sampling is keyed by position: the same seed gives the cloud's own tokens."""
    drafter = tiny_drafter("noisy")
    sampling = SamplingParams(temperature=0.8, top_k=50, seed=1234)
    address = f"127.0.0.1:{relay.port}"
    for text in PROMPTS[:2]:
        prompt = drafter.tokenize(text)
        hybrid = asyncio.run(generate(address, drafter, prompt, CONFIGS["deep-fixed"], sampling=sampling))
        cloud = asyncio.run(generate(address, drafter, prompt, SpeculationConfig(), Mode.CLOUD, sampling))
        assert hybrid.token_ids == cloud.token_ids
        assert len(hybrid.token_ids) == NEW_TOKENS or hybrid.finish_reason.label == "stop"


def test_relay_sees_every_message_and_the_delay(relay, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPTS[0])
    relay.reset_counters()
    generation = asyncio.run(generate(f"127.0.0.1:{relay.port}", drafter, prompt, SpeculationConfig()))
    s = generation.stats
    # TCP carries the serialized messages plus HTTP/2 framing and headers (Info call included).
    assert relay.bytes_up > s.bytes_sent > 0
    assert relay.bytes_down > s.bytes_received > 0
    round_trip = 2 * (LINK.one_way_delay_s - LINK.jitter_s)
    assert s.ttft_s >= round_trip
    assert s.policy["round_trip_ms"] >= 1000 * round_trip  # the policy measured the link
