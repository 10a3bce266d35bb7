"""Long prompts: a cloud at work is never taken for a dead one; a silent one still is.

The cloud acknowledges a session at once and reports progress while it prefills, so the
edge's silence timeout (the fallback timeout) measures silence, not work. Prompts beyond the
draft's context are answered by the cloud alone (exactly), and prompts beyond the cloud's
context get a clear error naming both numbers, in the CLI, `tandem serve` and the SDK.
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from conftest import hf_greedy
from raw_speculate import open_request, speculate

from cloud.limits import SessionLimits
from common.errors import CloudUnavailable, InvalidArgument
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from edge.client import CloudClient
from edge.engine import EdgeEngine, GenerationRequest, Mode
from edge.fallback import FallbackConfig
from edge.speculation_config import SpeculationConfig

CHUNK = 8


class SlowPrefillTarget:
    """The tiny target with every prefill pass slowed down: a cloud that is busy, not dead.

    A fault injected around the real model (the forward pass still runs), like a loaded host.
    """

    def __init__(self, target, prompt_tokens: int, seconds_per_pass: float):
        self._target = target
        self.prompt_tokens = prompt_tokens
        self.seconds_per_pass = seconds_per_pass

    def forward_batch(self, pool, segments):
        if any(segment.table.length < self.prompt_tokens for segment in segments):
            time.sleep(self.seconds_per_pass)
        return self._target.forward_batch(pool, segments)

    def __getattr__(self, name):
        return getattr(self._target, name)


def long_prompt(drafter, tokens: int) -> list[int]:
    text = " ".join(f"item {i} is a small red box on the shelf." for i in range(tokens))
    return drafter.tokenize(text)[:tokens]


async def run_engine(address, drafter, prompt, max_new_tokens, *, fallback=None, speculation=None, mode="hybrid"):
    client = CloudClient(address) if address else None
    try:
        engine = EdgeEngine(drafter, client, speculation, fallback)
        if client is not None:
            await engine.open() if fallback else await engine.connect()
        started = time.monotonic()
        generation = await engine.generate_to_end(GenerationRequest(prompt, max_new_tokens), Mode(mode))
        return generation, time.monotonic() - started
    finally:
        if client is not None:
            await client.close()


def test_progress_comes_at_once_and_before_the_first_token(cloud_factory, tiny_target, tiny_drafter):
    cloud = cloud_factory(max_batch_tokens=CHUNK)
    prompt = long_prompt(tiny_drafter("exact"), 5 * CHUNK + 3)
    responses, code, _ = speculate(cloud.address, [open_request(tiny_target, prompt, max_new_tokens=4)],
                                   progress=True)
    assert code == grpc.StatusCode.OK
    kinds = [r.WhichOneof("kind") for r in responses]
    assert kinds[0] == "progress" and kinds[-1] == "started" and set(kinds[:-1]) == {"progress"}
    done = [r.progress.prefilled_tokens for r in responses[:-1]]
    assert done[0] == 0 and done == sorted(done) and done[-1] <= len(prompt)  # the acknowledgement, then more
    assert all(r.progress.prefill_tokens == len(prompt) for r in responses[:-1])
    assert responses[-1].started.forward_passes == 6  # the prompt went in 8-token chunks


def test_chunked_prefill_is_the_targets_greedy_output(cloud_factory, tiny_target, tiny_drafter):
    cloud = cloud_factory(max_batch_tokens=CHUNK)
    drafter = tiny_drafter("noisy")
    prompt = long_prompt(drafter, 6 * CHUNK + 5)
    expected = hf_greedy(tiny_target, prompt, 24)
    for mode in ("hybrid", "cloud"):
        generation, _ = asyncio.run(run_engine(cloud.address, drafter, prompt, 24, mode=mode))
        assert generation.token_ids == expected, mode
        assert generation.stats.prefill_progress >= 1, mode  # at least the acknowledgement


def test_a_slow_prefill_stays_hybrid(cloud_factory, tiny_target, tiny_drafter):
    """Each prefill pass takes 1.5 s, the fallback timeout is 1 s: still the cloud."""
    cloud = cloud_factory(max_batch_tokens=CHUNK)
    drafter = tiny_drafter("noisy")
    prompt = long_prompt(drafter, 2 * CHUNK + 3)
    scheduler = cloud.running.worker
    scheduler.model = SlowPrefillTarget(tiny_target, len(prompt), 1.5)
    try:
        generation, seconds = asyncio.run(run_engine(cloud.address, drafter, prompt, 8,
                                                     fallback=FallbackConfig(timeout_s=1.0)))
    finally:
        scheduler.model = tiny_target
    assert not generation.degraded, generation.fallback_reason
    assert generation.answered_by == "hybrid"
    assert generation.stats.ttft_s > 4.5  # three chunks, each longer than the timeout
    assert generation.stats.prefill_progress >= 4
    assert generation.token_ids == hf_greedy(tiny_target, prompt, 8)


class SilentTandem(pb_grpc.TandemServicer):
    """A cloud that answers Info, accepts a Speculate stream and its open, then never answers."""

    def __init__(self, info: pb.InfoResponse):
        self.info = info
        self.opened = threading.Event()

    async def Info(self, request, context):
        return self.info

    async def Speculate(self, request_iterator, context):
        await context.read()
        self.opened.set()
        await asyncio.sleep(3600)


@pytest.mark.parametrize("fault", ["silent-server", "stuck-model"])
def test_a_silent_cloud_still_falls_back_in_time(cloud_factory, tiny_cloud, tiny_drafter, fault):
    """A cloud that accepts the stream but never answers: local answer within the timeout (+ slack)."""
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize("Once upon a time")
    timeout_s = 1.0
    stuck = threading.Event()

    async def scenario():
        if fault == "silent-server":
            server = grpc.aio.server()
            pb_grpc.add_TandemServicer_to_server(SilentTandem(tiny_cloud.running.service.info().to_pb()), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            address = f"127.0.0.1:{port}"
        else:  # the real cloud acknowledges the session, then its model thread never comes back
            cloud = cloud_factory()
            address = cloud.address
        try:
            client = CloudClient(address)
            engine = EdgeEngine(drafter, client, None, FallbackConfig(timeout_s=timeout_s, retry_min_s=30))
            await engine.open()
            if fault == "stuck-model":
                cloud.running.worker.submit(stuck.wait, 60)
            generation = await engine.generate_to_end(GenerationRequest(prompt, 6), Mode.HYBRID)
            await engine.close()
            await client.close()
            return generation
        finally:
            stuck.set()
            if fault == "silent-server":
                await server.stop(0)

    generation = asyncio.run(scenario())
    assert generation.degraded and generation.answered_by == "local"
    assert "within 1s" in generation.fallback_reason
    assert len(generation.token_ids) == 6
    # The first (local) token comes after the silence timeout, then the resume window (as long
    # again) in which a reopened stream waits out its own silence timeout: by design under
    # 3 timeouts (about 2 measured); the local prefill of a 4-token prompt after it takes
    # milliseconds, so the bound keeps a margin of about a second on a loaded 2-core machine.
    # A cloud waited for (a sleep of an hour, a model stuck for a minute) fails it.
    ttft = generation.stats.ttft_s
    assert timeout_s <= ttft < 3 * timeout_s, ttft


def test_a_prompt_beyond_the_drafts_context_is_answered_by_the_cloud_exactly(tiny_models, tiny_cloud, tiny_target):
    from edge.llama_drafter import LlamaDrafter

    drafter = LlamaDrafter(tiny_models.drafts["noisy"], n_ctx=64, threads=1, f32_cache=True)
    try:
        prompt = long_prompt(drafter, 90)
        for defer in (False, True):
            generation, _ = asyncio.run(run_engine(
                tiny_cloud.address, drafter, prompt, 16, fallback=FallbackConfig(timeout_s=5.0),
                speculation=SpeculationConfig(defer_draft_prefill=defer)))
            assert generation.token_ids == hf_greedy(tiny_target, prompt, 16)
            assert not generation.degraded
            assert generation.stats.drafting == "off-beyond-draft-context"
            assert generation.stats.drafting_off_at == 0
            assert generation.stats.drafted == 0
    finally:
        drafter.close()


def test_deferred_draft_prefill_is_exact_and_drafts(tiny_cloud, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = long_prompt(drafter, 60)
    generation, _ = asyncio.run(run_engine(tiny_cloud.address, drafter, prompt, 48,
                                           speculation=SpeculationConfig(defer_draft_prefill=True, cloud_decode=False)))
    assert generation.token_ids == hf_greedy(tiny_target, prompt, 48)
    assert generation.stats.drafting == "on" and generation.stats.drafted > 0


@pytest.mark.parametrize("mode", ["hybrid", "cloud"])
def test_a_prompt_beyond_the_clouds_context_is_a_clear_error(cloud_factory, tiny_drafter, mode):
    cloud = cloud_factory(limits=SessionLimits(max_context_tokens=64))
    drafter = tiny_drafter("noisy")
    prompt = long_prompt(drafter, 80)
    with pytest.raises(InvalidArgument, match=r"80 tokens.*context of 64"):
        asyncio.run(run_engine(cloud.address, drafter, prompt, 4, fallback=FallbackConfig(timeout_s=5.0), mode=mode))
    # The cloud refuses it too, naming both numbers, for a client that does not check first.
    _, code, details = speculate(cloud.address, [open_request(cloud.model, prompt)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "80" in details and "64" in details


def test_local_fallback_beyond_the_drafts_context_is_an_error_not_an_empty_answer(tiny_models, tiny_drafter):
    from edge.llama_drafter import LlamaDrafter

    drafter = LlamaDrafter(tiny_models.drafts["noisy"], n_ctx=64, threads=1)
    try:
        prompt = long_prompt(drafter, 90)
        with pytest.raises(CloudUnavailable, match="beyond its context of 64"):
            asyncio.run(run_engine("127.0.0.1:1", drafter, prompt, 4,
                                   fallback=FallbackConfig(timeout_s=0.5, retry_min_s=30)))
        with pytest.raises(InvalidArgument, match="90 tokens, beyond the local model's context of 64"):
            asyncio.run(run_engine(None, drafter, prompt, 4, mode="edge"))
    finally:
        drafter.close()


@pytest.fixture
def small_context_cloud(cloud_factory):
    return cloud_factory(limits=SessionLimits(max_context_tokens=64))


def test_beyond_the_clouds_context_in_the_cli_serve_and_sdk(small_context_cloud, tiny_models, tiny_drafter):
    """The same clear error everywhere: a CLI line with exit code 2, an OpenAI-shaped 400, an exception."""
    import subprocess

    import openai
    from cloud_process import ROOT, cli, cli_env
    from local_server import LocalServer

    from common.errors import ContextTooLong
    from edge.config import EdgeConfig
    from edge.sdk import TandemClient

    drafter = tiny_drafter("noisy")
    text = " ".join(["a small red box"] * 40)
    prompt_tokens = len(drafter.tokenize(text))
    assert prompt_tokens > 64
    both = f"{prompt_tokens} tokens, beyond the cloud model's context of 64"

    result = subprocess.run(cli("generate", text, "--cloud", small_context_cloud.address, "--draft-model",
                                str(tiny_models.drafts["noisy"]), "--threads", "1", "--n-ctx", "512"),
                            cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tandem: error: the prompt has") and both in last, last

    with LocalServer(drafter, small_context_cloud.address, fallback=FallbackConfig(timeout_s=5.0)) as server, \
            openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=60) as client:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                client.completions.create(model="tandem", prompt=text, max_tokens=4, stream=stream)
            assert info.value.status_code == 400
            assert info.value.code == "context_length_exceeded" and both in info.value.message

    config = EdgeConfig(cloud=small_context_cloud.address, draft_model=str(tiny_models.drafts["noisy"]),
                        threads=1, n_ctx=512)
    with TandemClient(config=config) as tandem, pytest.raises(ContextTooLong, match=both):
        tandem.complete(text, max_tokens=4)


def test_tandem_chat_trims_the_oldest_turns_to_fit(cloud_factory, tiny_drafter, capsys):
    from edge.chat import ChatSession
    from edge.sdk import AsyncTandemClient

    cloud = cloud_factory(limits=SessionLimits(max_context_tokens=160))
    drafter = tiny_drafter("noisy")

    async def scenario():
        client = CloudClient(cloud.address)
        try:
            engine = EdgeEngine(drafter, client)
            await engine.connect()
            session = ChatSession(AsyncTandemClient.from_engine(engine), "Be brief.", {"max_tokens": 16})
            turns = [(f"question number {i} about boxes", f"answer number {i} about red boxes") for i in range(12)]
            for question, answer in turns:
                session.history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            messages, prompt_ids = await session._fitting_prompt("and the last question?")
            return messages, prompt_ids
        finally:
            await client.close()

    messages, prompt_ids = asyncio.run(scenario())
    assert len(prompt_ids) + 16 <= 160
    assert messages[0]["role"] == "system" and messages[-1]["content"] == "and the last question?"
    kept = [m["content"] for m in messages[1:-1]]
    assert kept and kept[-1] == "answer number 11 about red boxes"  # the newest turns stay, in order
    dropped = 12 - len(kept) // 2
    assert f"dropped the {dropped} oldest turns" in capsys.readouterr().out
