"""Soak: 500 sequential sessions plus 50 cancelled ones against a real `tandem cloud` process.

Stated bound: after a warm-up of 50 sessions, the cloud's resident memory grows by less than
SOAK_RSS_BOUND_MIB over the remaining 500. Each session holds ~520 tokens of KV cache
(~0.25 MiB on the tiny model), so leaking the sessions would grow it by ~130 MiB.

The cloud runs with 4 session slots and a 2 MiB KV budget (~7 such sessions): a session that
was not freed, or a reservation that was not returned, soon makes the next one fail with
RESOURCE_EXHAUSTED, so the run itself proves the sessions are released.

Every session has a new prompt, so the cloud's prefix cache (KV snapshots of recent prompts)
fills up: it runs with a small cap, PREFIX_CACHE_MIB, which the bound includes. Past the cap
the cache evicts, so its memory is bounded too.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc
import pytest
from cloud_process import CloudProcess

from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc

SESSIONS = 500
CANCELLED = 50
WARMUP = 50
PROMPT_TOKENS = 512
PREFIX_CACHE_MIB = 16
SOAK_RSS_BOUND_MIB = 48 + PREFIX_CACHE_MIB


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def open_request(rng: random.Random, fingerprint: str) -> pb.SpeculateRequest:
    prompt = [rng.randrange(1000, 40000) for _ in range(PROMPT_TOKENS)]
    return pb.SpeculateRequest(open=pb.SessionOpen(prompt_token_ids=prompt, max_new_tokens=8,
                                                   tokenizer_fingerprint=fingerprint))


def full_session(stub, rng, fingerprint) -> None:
    """open, then blocks anchored on the cloud's tokens until the generation finishes."""
    call_requests = _Requests()  # the blocking API, driven message by message
    responses = stub.Speculate(iter(call_requests), timeout=30)
    call_requests.put(open_request(rng, fingerprint))
    started = first_answer(responses)
    position, token = started.position, started.token_id
    finished = started.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    while not finished:
        drafts = [rng.randrange(1000, 40000) for _ in range(3)]
        call_requests.put(pb.SpeculateRequest(draft=pb.DraftBlock(start_position=position,
                                                                  token_ids=[token, *drafts])))
        verdict = next(responses).verdict
        assert not verdict.stale
        accepted = drafts[: verdict.accepted_count]
        position += len(accepted) + (1 if verdict.HasField("next_token") else 0)
        token = verdict.next_token if verdict.HasField("next_token") else token
        finished = verdict.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    call_requests.close()
    assert list(responses) == []


def cancelled_session(stub, rng, fingerprint) -> None:
    """open, one block, then cancel without reading its verdict (a forward pass may be running)."""
    call_requests = _Requests()
    responses = stub.Speculate(iter(call_requests), timeout=30)
    call_requests.put(open_request(rng, fingerprint))
    started = first_answer(responses)
    call_requests.put(pb.SpeculateRequest(draft=pb.DraftBlock(start_position=started.position,
                                                              token_ids=[started.token_id, 5, 6, 7])))
    responses.cancel()
    call_requests.close()


def first_answer(responses) -> pb.SessionStarted:
    """The `started` message, after the progress messages before it."""
    while (response := next(responses)).HasField("progress"):
        pass
    return response.started


class _Requests:
    """A request iterator fed one message at a time (the blocking API pulls it from its own thread)."""

    def __init__(self):
        import queue

        self._queue = queue.Queue()

    def put(self, message) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self):
        while (message := self._queue.get()) is not None:
            yield message


@pytest.mark.slow
def test_soak_sessions_are_freed(tiny_models, tiny_target):
    rng = random.Random(0)
    cancel_at = set(rng.sample(range(SESSIONS + CANCELLED), CANCELLED))
    with CloudProcess(tiny_models.target_dir, "--max-sessions", "4", "--max-kv-mib", "2",
                      "--prefix-cache-mb", str(PREFIX_CACHE_MIB)) as cloud, \
            grpc.insecure_channel(cloud.address) as channel:
        stub = pb_grpc.TandemStub(channel)
        pid = cloud.process.pid
        samples = {}
        started = time.monotonic()
        for i in range(SESSIONS + CANCELLED):
            if i in cancel_at:
                cancelled_session(stub, rng, tiny_target.fingerprint)
            else:
                full_session(stub, rng, tiny_target.fingerprint)
            if i + 1 == WARMUP or (i + 1) % 100 == 0:
                samples[i + 1] = rss_mib(pid)
        elapsed = time.monotonic() - started
        # Every slot is free again: the cap admits 4 concurrent sessions at once.
        held = [_Requests() for _ in range(4)]
        streams = [stub.Speculate(iter(r), timeout=30) for r in held]
        for requests, responses in zip(held, streams):
            requests.put(open_request(rng, tiny_target.fingerprint))
            assert next(responses).HasField("started")
        for requests in held:
            requests.close()
        samples["end"] = rss_mib(pid)
    growth = max(samples.values()) - samples[WARMUP]
    print(f"\nsoak: {SESSIONS} sessions + {CANCELLED} cancelled in {elapsed:.1f}s; cloud RSS MiB by "
          f"session: {', '.join(f'{k}: {v:.0f}' for k, v in samples.items())}; growth after warm-up "
          f"{growth:.1f} MiB (bound {SOAK_RSS_BOUND_MIB})")
    assert growth < SOAK_RSS_BOUND_MIB
