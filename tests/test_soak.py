"""Soak: 500 sessions plus 50 cancelled ones, four at a time, against a real `tandem cloud` process.

Stated bound: after a warm-up of 50 sessions, the cloud's resident memory grows by less than
SOAK_RSS_BOUND_MIB over the remaining 500. Each session holds ~520 tokens of KV cache
(~0.25 MiB on the tiny model), so leaking the sessions would grow it by ~130 MiB.

Four clients run sessions side by side, so the cloud batches them (the test checks that its
passes held several sessions). It runs with 8 session slots and a 3 MiB KV budget (~11 such
sessions): sessions that were not freed, or reservations that were not returned, soon make
the next one fail with RESOURCE_EXHAUSTED, so the run itself proves the sessions are released.

Every session has a new prompt, so the cloud's prefix cache (KV snapshots of recent prompts)
fills up: it runs with a small cap, PREFIX_CACHE_MIB, which the bound includes. Past the cap
the cache evicts, so its memory is bounded too.
"""

from __future__ import annotations

import random
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
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
CONCURRENT = 4


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
        verdict = next_answer(responses).verdict
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


def next_answer(responses) -> pb.SpeculateResponse:
    """The next response that is not a progress message."""
    while (response := next(responses)).HasField("progress"):
        pass
    return response


def first_answer(responses) -> pb.SessionStarted:
    return next_answer(responses).started


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch_sessions(metrics_port: int) -> dict[str, float]:
    """The cloud's sessions-per-pass histogram: {"le=1": passes with one session, "count": all passes}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tandem_batch_sessions_count":
                out["count"] = sample.value
            elif sample.name == "tandem_batch_sessions_bucket" and float(sample.labels["le"]) == 1.0:
                out["le=1"] = sample.value
    return out


@pytest.mark.slow
def test_soak_sessions_are_freed(tiny_models, tiny_target):
    cancel_at = set(random.Random(0).sample(range(SESSIONS + CANCELLED), CANCELLED))
    metrics_port = free_port()
    with CloudProcess(tiny_models.target_dir, "--max-sessions", "8", "--max-kv-mib", "3",
                      "--prefix-cache-mb", str(PREFIX_CACHE_MIB), "--metrics-port", str(metrics_port)) as cloud, \
            grpc.insecure_channel(cloud.address) as channel:
        stub = pb_grpc.TandemStub(channel)
        pid = cloud.process.pid
        samples = {}
        started = time.monotonic()

        def session(i: int) -> None:
            rng = random.Random(i)
            if i in cancel_at:
                cancelled_session(stub, rng, tiny_target.fingerprint)
            else:
                full_session(stub, rng, tiny_target.fingerprint)

        with ThreadPoolExecutor(CONCURRENT) as pool:
            for done, _ in enumerate(pool.map(session, range(SESSIONS + CANCELLED)), 1):
                if done == WARMUP or done % 100 == 0:
                    samples[done] = rss_mib(pid)
        elapsed = time.monotonic() - started
        passes = batch_sessions(metrics_port)
        # Every slot is free again: the cap admits 8 concurrent sessions at once.
        rng = random.Random(-1)
        held = [_Requests() for _ in range(8)]
        streams = [stub.Speculate(iter(r), timeout=30) for r in held]
        for requests, responses in zip(held, streams):
            requests.put(open_request(rng, tiny_target.fingerprint))
            assert first_answer(responses) is not None
        for requests in held:
            requests.close()
        samples["end"] = rss_mib(pid)
    growth = max(samples.values()) - samples[WARMUP]
    print(f"\nsoak: {SESSIONS} sessions + {CANCELLED} cancelled, {CONCURRENT} at a time, in {elapsed:.1f}s; "
          f"{passes['count'] - passes['le=1']:.0f} of {passes['count']:.0f} forward passes held several sessions; "
          f"cloud RSS MiB by session: {', '.join(f'{k}: {v:.0f}' for k, v in samples.items())}; growth after "
          f"warm-up {growth:.1f} MiB (bound {SOAK_RSS_BOUND_MIB})")
    assert passes["le=1"] < passes["count"]  # many sessions were live at once, sharing passes
    assert growth < SOAK_RSS_BOUND_MIB
