"""The SDK in the three lines the README promises, sync and asyncio, against a real cloud."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from conftest import hf_greedy

from common.detok import IncrementalDetokenizer
from edge import AsyncTandemClient, TandemClient
from edge.config import EdgeConfig


@contextlib.contextmanager
def most_live_sessions(cloud):
    """Yields a one-item list: the most sessions the cloud held at once while inside (resettable).

    Counted at each admission (the registry's add), not by polling, so a busy machine that
    delays a poller cannot miss a moment when they were all live."""
    registry = cloud.running.registry
    admit, most_live = registry.add, [0]

    def add(session):
        session_id = admit(session)
        most_live[0] = max(most_live[0], len(registry))
        return session_id

    registry.add = add
    try:
        yield most_live
    finally:
        del registry.add  # the class's own again


def sdk_config(tiny_cloud, tiny_models):
    return EdgeConfig(cloud=tiny_cloud.address, draft_model=str(tiny_models.drafts["noisy"]), threads=1)


def test_sync_sdk_streams_the_target_output(tiny_cloud, tiny_models, tiny_target, tiny_drafter):
    prompt = "The weather today"
    with TandemClient(config=sdk_config(tiny_cloud, tiny_models)) as tandem:
        deltas = list(tandem.stream(prompt, max_tokens=20))
        completion = tandem.complete(prompt, max_tokens=20)
    drafter = tiny_drafter("noisy")
    assert completion.token_ids == hf_greedy(tiny_target, drafter.tokenize(prompt), 20)
    assert "".join(deltas) == completion.text
    assert completion.text == b"".join(drafter.token_bytes(t) for t in completion.token_ids).decode(errors="replace")
    assert completion.stats["tokens"] == len(completion.token_ids)


def test_async_sdk_matches_sync(tiny_cloud, tiny_models, tiny_target, tiny_drafter):
    prompt = "import numpy as np"

    async def main():
        async with AsyncTandemClient(config=sdk_config(tiny_cloud, tiny_models)) as tandem:
            return [delta async for delta in tandem.stream(prompt, max_tokens=15)], \
                await tandem.complete(prompt, max_tokens=15)

    deltas, completion = asyncio.run(main())
    assert completion.token_ids == hf_greedy(tiny_target, tiny_drafter("noisy").tokenize(prompt), 15)
    assert "".join(deltas) == completion.text


def test_detokenizer_never_emits_broken_utf8():
    text = "héllo 👩‍💻 世界!"
    raw = text.encode()
    pieces = {i: raw[i:i + 1] for i in range(len(raw))}  # one byte per "token": worst case
    detok = IncrementalDetokenizer(pieces.__getitem__)
    deltas = [detok.push([i]) for i in range(len(raw))] + [detok.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    # A character is released only once complete: the number of non-empty deltas equals the characters.
    assert sum(1 for d in deltas if d) == len(text)


def test_detokenizer_flushes_an_incomplete_tail():
    detok = IncrementalDetokenizer({0: b"ok", 1: "é".encode()[:1]}.__getitem__)
    assert detok.push([0, 1]) == "ok"
    assert detok.flush() == "\ufffd"


def test_concurrent_cloud_only_completions_from_one_instance_overlap(cloud_factory, tiny_models, tiny_target,
                                                                     tiny_drafter):
    """Cloud-only answers need no draft model, so they do not queue behind one another."""
    cloud = cloud_factory()
    prompts = ["The weather today", "import numpy as np", "Once upon a time", "def main():"]

    async def main():
        config = EdgeConfig(cloud=cloud.address, draft_model=str(tiny_models.drafts["noisy"]), threads=1)
        async with AsyncTandemClient(config=config, mode="cloud") as tandem:
            return await asyncio.gather(*(tandem.complete(p, max_tokens=48) for p in prompts))

    with most_live_sessions(cloud) as most_live:
        completions = asyncio.run(main())
    drafter = tiny_drafter("noisy")
    for prompt, completion in zip(prompts, completions):
        assert completion.token_ids == hf_greedy(tiny_target, drafter.tokenize(prompt), 48)
    assert most_live[0] == len(prompts)  # all four streams were open at the cloud at once
    assert cloud.running.worker.forward_passes < sum(c.stats["cloud_forward_passes"] for c in completions)


@pytest.mark.parametrize("slots", [1, 2])
def test_concurrent_hybrid_generations_draft_side_by_side_up_to_the_slots(cloud_factory, tiny_target, tiny_drafter,
                                                                         slots):
    """Each draft slot is a context of its own: two slots, two answers drafting at once; one, they take turns."""
    from edge.client import CloudClient
    from edge.engine import EdgeEngine, GenerationRequest, Mode

    cloud = cloud_factory()
    drafter = tiny_drafter("noisy")
    prompts = [drafter.tokenize(p) for p in ("The weather today", "Once upon a time")]

    async def main():
        client = CloudClient(cloud.address)
        engine = EdgeEngine(drafter, client, draft_slots=slots)
        try:
            await engine.connect()

            async def one(prompt):
                return await engine.generate_to_end(GenerationRequest(prompt, 40), Mode.HYBRID)

            await asyncio.gather(*(one(p) for p in prompts))  # the second context is made on first need
            most_live[0] = 0
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await engine.close()
            await client.close()

    with most_live_sessions(cloud) as most_live:
        generations = asyncio.run(main())
    for prompt, generation in zip(prompts, generations):
        assert generation.token_ids == hf_greedy(tiny_target, prompt, 40)
    assert most_live[0] == slots


def test_the_tandem_package_exports_what_its_sdk_re_exports():
    import tandem
    import tandem.sdk

    assert sorted(tandem.__all__) == sorted(tandem.sdk.__all__)
    for name in tandem.sdk.__all__:
        assert getattr(tandem, name) is getattr(tandem.sdk, name)
    assert issubclass(tandem.Tandem, TandemClient) and issubclass(tandem.AsyncTandem, AsyncTandemClient)
