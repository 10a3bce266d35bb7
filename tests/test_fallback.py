"""Offline fallback, end to end: real clouds that go silent, refuse, or die mid-answer.

The properties: an answer always completes; the part the cloud committed is the target's own
greedy output, the rest is the draft model's own greedy continuation from exactly that point
(nothing lost or repeated at the switch); the answer says it is degraded (chunks, response,
header); and once the cloud is back, answers are hybrid (and exact) again.
"""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import openai
import pytest
from cloud_process import CloudProcess
from conftest import hf_greedy
from local_server import LocalServer

from common.errors import CloudUnavailable
from bench.relay import LinkConfig, RelayThread
from edge.chat_template import render_chat
from edge.config import EdgeConfig
from edge.fallback import FallbackConfig
from edge.sdk import AsyncTandemClient

MESSAGES = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
FAST_RETRY = dict(retry_min_s=0.2, retry_max_s=1.0)


def draft_greedy(drafter, context: list[int], max_tokens: int) -> list[int]:
    """The draft model's own greedy continuation of `context`, as the local fallback writes it."""
    out: list[int] = []
    while len(out) < max_tokens:
        out.append(int(np.argmax(drafter.next_logits(context + out))))
        if out[-1] in drafter.eos_token_ids:
            break
    return out


def decode(drafter, ids: list[int]) -> str:
    return b"".join(drafter.token_bytes(t) for t in ids).decode("utf-8", errors="replace")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_answer(client, max_tokens: int, on_chunk=None) -> tuple[dict, list]:
    """Streams a greedy chat answer; returns the response headers and (degraded, ids, text) per chunk."""
    chunks = []
    with client.chat.completions.with_streaming_response.create(
            model="tandem", messages=MESSAGES, temperature=0, max_tokens=max_tokens, stream=True,
            extra_body={"return_token_ids": True}) as response:
        headers = dict(response.headers)
        for chunk in response.parse():
            choice = chunk.choices[0]
            chunks.append((chunk, chunk.degraded, choice.model_extra.get("token_ids", []), choice.delta.content or ""))
            if on_chunk:
                on_chunk(sum(len(c[2]) for c in chunks))
    return headers, chunks


def assert_hybrid_and_exact(client, target, prompt_ids, max_tokens=16):
    raw = client.chat.completions.with_raw_response.create(
        model="tandem", messages=MESSAGES, temperature=0, max_tokens=max_tokens,
        extra_body={"return_token_ids": True})
    response = raw.parse()
    ids = response.choices[0].model_extra["token_ids"]
    assert raw.headers["X-Tandem-Degraded"] == "false"
    assert response.degraded is False and response.tandem["answered_by"] == "hybrid"
    assert ids == hf_greedy(target, prompt_ids, max_tokens)[: len(ids)] and ids


@pytest.fixture
def relay(tiny_cloud):
    host, port = tiny_cloud.address.rsplit(":", 1)
    with RelayThread((host, int(port))) as relay:
        yield relay


def test_silent_cloud_falls_back_within_the_timeout_then_recovers(relay, tiny_cloud, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt_ids = drafter.tokenize(render_chat(drafter.chat_template, MESSAGES))
    timeout_s = 1.0
    with LocalServer(drafter, f"127.0.0.1:{relay.port}", FallbackConfig(timeout_s=timeout_s, **FAST_RETRY)) as server, \
            openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=60) as client:
        assert_hybrid_and_exact(client, tiny_target, prompt_ids)

        relay.set_config(LinkConfig(one_way_delay_s=60.0))  # the network goes silent, nothing errors
        started = time.monotonic()
        first_chunk_s = []
        headers, chunks = stream_answer(client, 12, lambda n: first_chunk_s.append(time.monotonic() - started))
        # The wait is bounded by the timeout (plus a generous margin for this shared 2-core box).
        assert first_chunk_s[0] < timeout_s + 3.0
        ids = [t for _, _, chunk_ids, _ in chunks for t in chunk_ids]
        final = chunks[-1][0]
        assert headers["x-tandem-degraded"] == "true" and headers["x-tandem-answered-by"] == "local"
        assert all(degraded for _, degraded, _, _ in chunks)
        assert final.tandem["answered_by"] == "local" and final.tandem["fallback_at"] == 0
        assert "within 1s" in final.tandem["fallback_reason"]
        assert ids == draft_greedy(drafter, prompt_ids, 12)
        assert server.health()["cloud"]["state"] == "down"
        metrics = server.metrics()
        assert metrics[("tandem_edge_fallbacks_total", (("at", "start"),))] == 1
        assert metrics[("tandem_edge_degraded_answers_total", ())] == 1
        assert metrics[("tandem_edge_generated_tokens_total", (("source", "local"),))] == 12

        relay.set_config(LinkConfig())  # the network heals; stale connections die
        relay.drop_connections()
        health = server.wait_for(lambda h: h["cloud"]["state"] == "up", what="the cloud to be reconnected")
        assert health["cloud"]["reconnects"] == 1
        assert_hybrid_and_exact(client, tiny_target, prompt_ids)
    deadline = time.monotonic() + 10
    while tiny_cloud.live_sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tiny_cloud.live_sessions == 0


def test_without_fallback_a_lost_cloud_is_an_error(relay, tiny_drafter):
    """Fallback off: a stream whose cloud is gone (no replica to resume on within the connect timeout)
    ends with an error event; an unreachable cloud is a 503."""
    with LocalServer(tiny_drafter("noisy"), f"127.0.0.1:{relay.port}") as server, \
            openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=60) as client:
        stream = client.chat.completions.create(model="tandem", messages=MESSAGES, temperature=0, max_tokens=800,
                                                stream=True)
        assert next(stream).degraded is False
        relay.stop()  # the link breaks and stays down: resuming finds no cloud
        with pytest.raises(openai.APIError, match="(?i)cloud unavailable"):
            for _ in stream:
                pass
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(model="tandem", messages=MESSAGES, max_tokens=8, stream=stream)
            assert caught.value.status_code == 503
            assert caught.value.body["type"] == "service_unavailable"
            assert f"127.0.0.1:{relay.port}" in caught.value.body["message"]  # says which cloud it could not reach
        assert server.health()["requests"] == {"active": 0, "completed": 0, "cancelled": 0, "failed": 3,
                                               "degraded": 0}


def test_sdk_fallback_flag(tiny_models):
    """Fallback on (default): a local, degraded answer. Off: CloudUnavailable, never a local answer."""
    config = EdgeConfig(cloud=f"127.0.0.1:{closed_port()}", draft_model=str(tiny_models.drafts["noisy"]),
                        threads=1, n_ctx=512, connect_timeout_s=1.0,
                        fallback=FallbackConfig(timeout_s=1.0, **FAST_RETRY))

    async def run(fallback: bool):
        async with AsyncTandemClient(config=config, fallback=fallback) as tandem:
            return await tandem.complete("Once upon a time", max_tokens=6)

    completion = asyncio.run(run(True))
    assert completion.degraded and completion.answered_by == "local" and completion.fallback_at == 0
    assert len(completion.token_ids) == 6 or completion.finish_reason == "stop"
    with pytest.raises(CloudUnavailable):
        asyncio.run(run(False))


def test_cloud_killed_mid_answer(tiny_models, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt_ids = drafter.tokenize(render_chat(drafter.chat_template, MESSAGES))
    max_tokens, kill_after = 120, 8
    cloud = CloudProcess(tiny_models.target_dir, start_timeout_s=180.0).start()
    try:
        # A 20 ms link makes each cloud round take a while, so the kill lands mid-answer. The kill
        # is seen as a reset at once; the long timeout only keeps a loaded machine from tripping it.
        with RelayThread(("127.0.0.1", cloud.port), LinkConfig(one_way_delay_s=0.02)) as relay, \
                LocalServer(drafter, f"127.0.0.1:{relay.port}", FallbackConfig(timeout_s=10.0, **FAST_RETRY)) as server, \
                openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=120) as client:

            def kill_once(tokens_so_far: int) -> None:
                if tokens_so_far >= kill_after and cloud.process.poll() is None:
                    cloud.kill()

            headers, chunks = stream_answer(client, max_tokens, kill_once)
            assert cloud.process.poll() is not None, "the answer ended before the cloud was killed"
            final = chunks[-1][0]
            ids = [t for _, _, chunk_ids, _ in chunks for t in chunk_ids]
            text = "".join(text for _, _, _, text in chunks)
            switch = final.tandem["fallback_at"]

            # It completed, marked degraded, and switched mid-answer.
            assert headers["x-tandem-degraded"] == "false"  # it started hybrid
            assert final.degraded is True and final.tandem["answered_by"] == "hybrid-then-local"
            assert final.choices[0].finish_reason in ("stop", "length")
            assert kill_after <= switch < len(ids)
            # Nothing lost or repeated at the switch: the cloud's part is the target's greedy output,
            # the rest the draft's greedy continuation from exactly there, and the text is their decoding.
            assert ids[:switch] == hf_greedy(tiny_target, prompt_ids, max_tokens)[:switch]
            assert ids[switch:] == draft_greedy(drafter, prompt_ids + ids[:switch], max_tokens - switch)
            assert text == decode(drafter, ids)
            flags = [degraded for _, degraded, _, _ in chunks]
            assert flags == sorted(flags) and flags[0] is False  # never back to hybrid within the answer

            cloud = CloudProcess(tiny_models.target_dir, port=cloud.port, start_timeout_s=180.0).start()  # back
            server.wait_for(lambda h: h["cloud"]["state"] == "up", timeout=60, what="the restarted cloud")
            assert_hybrid_and_exact(client, tiny_target, prompt_ids)
    finally:
        cloud.stop()
