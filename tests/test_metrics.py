"""The cloud's /metrics agree with what the sessions themselves saw."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import pytest
from conftest import hf_greedy
from prometheus_client.parser import text_string_to_metric_families

from edge.client import CloudClient
from edge.engine import EdgeEngine, Generation, GenerationRequest, Mode

PROMPTS = ["The quick brown fox", "def fibonacci(n):", "Once upon a time", "Hello there"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the cloud's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def metered_cloud(cloud_factory):
    return cloud_factory(metrics_port=free_port())


async def run_concurrently(address, drafters, prompts, mode, max_new_tokens=24) -> list[Generation]:
    """One engine (own drafter, own connection) per prompt, all generating at once."""
    async def one(drafter, prompt):
        client = CloudClient(address)
        try:
            engine = EdgeEngine(drafter, client)
            await engine.connect()
            return await engine.generate_to_end(GenerationRequest(drafter.tokenize(prompt), max_new_tokens), mode)
        finally:
            await client.close()

    return await asyncio.gather(*(one(d, p) for d, p in zip(drafters, prompts)))


def test_metrics_counters_agree_with_the_sessions_own_stats(metered_cloud, tiny_drafter, tiny_target):
    cloud = metered_cloud
    drafters = [tiny_drafter(name) for name in ("noisy", "wild", "exact")]
    before = scrape(cloud.running.metrics_port)
    assert before[("tandem_sessions_live", ())] == 0
    hybrid = asyncio.run(run_concurrently(cloud.address, drafters, PROMPTS[:3], Mode.HYBRID))
    generated = asyncio.run(run_concurrently(cloud.address, drafters, PROMPTS[1:4], Mode.CLOUD))
    for run, drafter, prompt in zip(hybrid, drafters, PROMPTS):
        assert run.token_ids == hf_greedy(tiny_target, drafter.tokenize(prompt), len(run.token_ids))
    m = scrape(cloud.running.metrics_port)

    accepted = sum(g.stats.accepted for g in hybrid)
    assert accepted > 0 and any(g.stats.drafted > g.stats.accepted for g in hybrid)  # rejections happened
    assert m[("tandem_spec_decode_num_accepted_tokens_total", ())] == accepted
    verified = [block for g in hybrid for block in g.stats.verified_blocks if block[0]]
    assert m[("tandem_spec_decode_num_drafts_total", ())] == len(verified)
    assert m[("tandem_spec_decode_num_draft_tokens_total", ())] == sum(d for d, _ in verified)
    per_position = {dict(labels)["position"]: value for (name, labels), value in m.items()
                    if name == "tandem_spec_decode_num_accepted_tokens_per_pos_total"}
    assert sum(per_position.values()) == accepted
    assert per_position["0"] == sum(1 for _, a in verified if a >= 1)
    assert m[("tandem_generated_tokens_total", (("rpc", "Speculate"),))] == sum(len(g.token_ids) for g in hybrid)
    assert m[("tandem_generated_tokens_total", (("rpc", "Generate"),))] == sum(len(g.token_ids) for g in generated)

    # Forward passes are counted once per batch: the sessions-per-pass histogram adds up to the
    # passes each session counted for itself, over exactly as many passes as the counter says.
    session_passes = sum(g.stats.cloud_forward_passes for g in (*hybrid, *generated))
    passes = m[("tandem_forward_passes_total", ())]
    assert m[("tandem_batch_sessions_sum", ())] == session_passes
    assert m[("tandem_batch_sessions_count", ())] == passes == cloud.running.worker.forward_passes
    assert passes < session_passes  # some passes held several sessions
    assert m[("tandem_rpc_total", (("code", "OK"), ("method", "Speculate")))] == 3
    assert m[("tandem_rpc_total", (("code", "OK"), ("method", "Generate")))] == 3
    assert m[("tandem_sessions_live", ())] == 0
    assert 0 <= m[("tandem_kv_cache_usage_ratio", ())] < 1

    # Goodput and waste (issue 21): the rejected drafts are the sessions' own drafted - accepted; goodput
    # is every committed token over the forward passes' time, which the plain counter and the histogram agree on.
    assert m[("tandem_spec_decode_num_wasted_draft_tokens_total", ())] == sum(d - a for d, a in verified) > 0
    forward_s = m[("tandem_forward_seconds_sum", ())]
    assert m[("tandem_forward_pass_seconds_total", ())] == pytest.approx(forward_s, rel=1e-9) and forward_s > 0
    committed = sum(len(g.token_ids) for g in (*hybrid, *generated))
    assert m[("tandem_goodput_tokens_per_forward_second", ())] == pytest.approx(committed / forward_s, rel=1e-9)
