"""Faults between edge and cloud: the cloud dies or restarts, the link is cut or goes silent.

The edge must get a clear CloudUnavailable (never a hang or a raw grpc error), the cloud must
free what the broken session held, and both must work again once the fault is gone.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from cloud_process import CloudProcess
from conftest import generate_ids, hf_greedy

from common.channel import Keepalive
from common.errors import CloudUnavailable
from bench.relay import LinkConfig, RelayThread
from edge.client import CloudClient
from edge.engine import EdgeEngine, Generation, GenerationRequest, Mode

PROMPT = "Once upon a time"
LONG = 1500  # more tokens than can be generated before the fault strikes
NO_HANG_S = 60  # every faulted generation must end well within this


async def generate_until_fault(engine, prompt, fault, mode="hybrid", after_tokens=4):
    """Starts a long generation, runs fault() once `after_tokens` arrived; returns (tokens, error, seconds)."""
    generation = Generation(Mode(mode))
    struck = None
    try:
        async for _ in engine.generate(GenerationRequest(prompt, LONG), Mode(mode), generation):
            if struck is None and len(generation.token_ids) >= after_tokens:
                await asyncio.to_thread(fault)
                struck = time.monotonic()
    except CloudUnavailable as exc:
        return generation.token_ids, exc, time.monotonic() - struck
    raise AssertionError(f"the generation survived the fault ({len(generation.token_ids)} tokens)")


def run_faulted(client_factory, drafter, prompt, fault, **kwargs):
    async def run():
        client = client_factory()
        try:
            engine = EdgeEngine(drafter, client)
            await engine.connect()
            return await asyncio.wait_for(generate_until_fault(engine, prompt, fault, **kwargs), NO_HANG_S)
        finally:
            await client.close()

    return asyncio.run(run())


def wait_for(predicate, timeout_s=15.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_cloud_killed_mid_stream_down_and_restarted(tiny_models, tiny_target, tiny_drafter):
    """One long-lived client (as the SDK holds) through a `tandem cloud` that is killed and restarted."""
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    expected = hf_greedy(tiny_target, prompt, 24)
    clouds = [CloudProcess(tiny_models.target_dir).start()]

    async def scenario():
        client = CloudClient(clouds[0].address, connect_timeout_s=5)
        engine = EdgeEngine(drafter, client)
        await engine.connect()
        try:
            for mode in ("hybrid", "cloud"):
                # Killed mid-stream (SIGKILL: no goodbye): a clear error, in seconds.
                tokens, error, seconds = await asyncio.wait_for(
                    generate_until_fault(engine, prompt, clouds[-1].kill, mode), NO_HANG_S)
                assert tokens == hf_greedy(tiny_target, prompt, len(tokens))  # what did arrive was right
                assert seconds < 10, f"the edge took {seconds:.1f}s to notice a dead cloud"
                assert "cloud unavailable" in str(error)
                if mode == "hybrid":  # while it is down, a new generation fails within the connect timeout
                    started = time.monotonic()
                    with pytest.raises(CloudUnavailable, match="cannot reach the cloud"):
                        await asyncio.wait_for(collect(engine, prompt, mode), NO_HANG_S)
                    assert time.monotonic() - started < 5 + 5
                # Back on the same port: the same client reconnects by itself.
                restarted = CloudProcess(tiny_models.target_dir, port=clouds[-1].port)
                clouds.append(await asyncio.to_thread(restarted.start))
                assert await asyncio.wait_for(collect(engine, prompt, mode), NO_HANG_S) == expected
        finally:
            await client.close()

    try:
        asyncio.run(scenario())
    finally:
        for cloud in clouds:
            cloud.stop()


async def collect(engine, prompt, mode="hybrid", max_new_tokens=24):
    return (await engine.generate_to_end(GenerationRequest(prompt, max_new_tokens), Mode(mode))).token_ids


@pytest.mark.parametrize("mode", ["hybrid", "cloud"])
def test_link_cut_mid_stream_resumes(cloud_factory, tiny_target, tiny_drafter, mode):
    """Connections reset mid-answer, the address still answers: the edge reopens the session from
    the committed tokens (edge/resume.py) and the answer is still exactly the target's."""
    cloud = cloud_factory()
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    with RelayThread(("127.0.0.1", cloud.running.port), LinkConfig(one_way_delay_s=0.002)) as relay:
        async def run():
            client = CloudClient(f"127.0.0.1:{relay.port}")
            try:
                engine = EdgeEngine(drafter, client)
                await engine.connect()
                generation, cut = Generation(Mode(mode)), False
                async for _ in engine.generate(GenerationRequest(prompt, 200), Mode(mode), generation):
                    if not cut and len(generation.token_ids) >= 4:
                        await asyncio.to_thread(relay.drop_connections)
                        cut = True
                return generation
            finally:
                await client.close()

        generation = asyncio.run(asyncio.wait_for(run(), NO_HANG_S))
    assert generation.token_ids == hf_greedy(tiny_target, prompt, 200)
    assert generation.stats.resumes >= 1 and not generation.degraded
    wait_for(lambda: len(cloud.running.registry) == 0)  # the cloud freed the broken session


def test_silent_link_is_noticed_by_keepalive_on_both_sides(cloud_factory, tiny_target, tiny_drafter):
    """The link goes silent (no FIN, no RST): only keepalive can tell. Both sides give up in seconds."""
    cloud = cloud_factory(keepalive_s=1.0, keepalive_timeout_s=1.0, idle_timeout_s=0)
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    with RelayThread(("127.0.0.1", cloud.running.port)) as relay:
        address = f"127.0.0.1:{relay.port}"

        def black_hole():
            relay.set_config(LinkConfig(one_way_delay_s=3600.0))

        # Once keepalive notices, the edge tries to resume for up to the connect timeout.
        client = lambda: CloudClient(address, keepalive=Keepalive(time_s=1.0, timeout_s=1.0),  # noqa: E731
                                     connect_timeout_s=5)
        tokens, error, seconds = run_faulted(client, drafter, prompt, black_hole)
        assert tokens == hf_greedy(tiny_target, prompt, len(tokens))
        assert seconds < 10, f"the edge took {seconds:.1f}s to notice a silent link"
        assert "cloud unavailable" in str(error)
        # No idle timeout on this cloud: only its keepalive can free the session.
        assert wait_for(lambda: len(cloud.running.registry) == 0) < 10


@pytest.mark.parametrize("mode", ["hybrid", "cloud"])
def test_hung_cloud_is_noticed_by_the_response_timeout(cloud_factory, tiny_drafter, mode):
    """The cloud's model thread is stuck: grpc still answers pings, so only the response timeout helps."""
    cloud = cloud_factory()
    drafter = tiny_drafter("noisy")
    stuck = threading.Event()
    cloud.running.worker.submit(stuck.wait, NO_HANG_S)

    async def run():
        # The edge retries (another replica might answer) for up to the connect timeout.
        client = CloudClient(cloud.address, response_timeout_s=1.0, connect_timeout_s=4)
        started = time.monotonic()
        with pytest.raises(CloudUnavailable, match="no answer for 1 s"):
            await asyncio.wait_for(generate_ids(client, drafter, drafter.tokenize(PROMPT), 8, mode), NO_HANG_S)
        return time.monotonic() - started

    try:
        assert asyncio.run(run()) < 10
    finally:
        stuck.set()
    wait_for(lambda: len(cloud.running.registry) == 0)  # freed once the model thread moves again
