"""The capacity benchmark's service-level search (bench/capacity.py).

find_capacity is driven first by a formula, then through the real scheduler, gRPC service and
one emulated link per session, against a scripted cloud whose pass time is a function of the
tokens in the pass: fast up to FAST_TOKENS tokens, slow beyond. Cloud-only decoding puts every
live session's next token in each pass, so its capacity at the service level is FAST_TOKENS.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from test_engine_protocols import GREEDY, ScriptedTarget, continuation

from bench.capacity import Links, Sample, ServiceLevel, find_capacity, measure_sessions
from bench.load import Load

LEVEL = ServiceLevel(min_p10_tokens_per_s=8.0, max_p90_ttft_s=2.0)


def formula(capacity: int, slow_ttft_above: int | None = None):
    """A measurement whose sessions each get 40 tok/s up to `capacity` sessions and 4 tok/s beyond."""
    calls = []

    async def measure(n: int) -> Sample:
        calls.append(n)
        rate = 40.0 if n <= capacity else 4.0
        ttft = 3.0 if slow_ttft_above is not None and n > slow_ttft_above else 0.1
        return Sample(n, [rate] * n, [ttft] * n)

    return measure, calls


@pytest.mark.parametrize("capacity", [0, 1, 2, 5, 17, 64, 100])
def test_the_search_finds_a_known_capacity(capacity):
    measure, calls = formula(capacity)
    found, samples = asyncio.run(find_capacity(measure, LEVEL, most=100))
    assert found == capacity
    assert [s.sessions for s in samples] == sorted(set(calls))  # each count measured once
    assert len(calls) <= 2 * 7 + 1  # a doubling ramp and a bisection, not a sweep


def test_time_to_first_token_bounds_capacity_too():
    measure, _ = formula(capacity=50, slow_ttft_above=9)
    assert asyncio.run(find_capacity(measure, LEVEL, most=128))[0] == 9


def test_failed_sessions_fail_the_level():
    async def measure(n: int) -> Sample:
        return Sample(n, [40.0] * n, [0.1] * n, failed=int(n > 3))

    assert asyncio.run(find_capacity(measure, LEVEL, most=64))[0] == 3


FAST_TOKENS, FAST_S, SLOW_S = 4, 0.02, 0.3


class PacedTarget(ScriptedTarget):
    """The scripted target, with a forward pass that takes FAST_S up to FAST_TOKENS tokens, else SLOW_S."""

    def forward_batch(self, pool, segments):
        tokens = sum(len(s.token_ids) for s in segments)
        time.sleep(FAST_S if tokens <= FAST_TOKENS else SLOW_S)
        return super().forward_batch(pool, segments)


def test_the_search_finds_the_scripted_clouds_capacity():
    """Through the real cloud: at most FAST_TOKENS sessions decode at >= 1/FAST_S-ish tokens/s each;
    one more puts every pass past FAST_TOKENS tokens (<= 1/SLOW_S tokens/s each), so capacity is
    FAST_TOKENS; and every output is the scripted target's own."""
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    prompts = [[5], [9], [17]]  # one token each: a prefill of up to FAST_TOKENS sessions is fast too
    max_tokens = 10
    level = ServiceLevel(min_p10_tokens_per_s=10.0, max_p90_ttft_s=2.0)
    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, max_kv_mib=4, batch_wait_ms=0),
                       model=PacedTarget()) as cloud:
        address = ("127.0.0.1", cloud.running.port)
        references = [continuation(p, max_tokens, GREEDY) for p in prompts]

        async def search():
            load = Load(None, prompts, references, max_tokens, 4, 0.0, ScriptedTarget.vocab_size,
                        ScriptedTarget.fingerprint)
            links = Links(address, rtt_ms=0)
            try:
                return await find_capacity(lambda n: measure_sessions(load, links, "cloud", n), level, most=16)
            finally:
                await links.close()

        capacity, samples = asyncio.run(search())
    assert capacity == FAST_TOKENS, [s.to_json(level) for s in samples]
    for sample in samples:
        assert sample.failed == 0 and len(sample.tokens_per_s) == sample.sessions
        assert sample.extra["identical_to_alone"] == sample.sessions  # exactness under load


def test_overload_queues_or_refuses_with_a_retry_hint_and_nothing_stalls():
    """Four times the scripted cloud's capacity at once, against a cloud admitting 2x capacity:
    every session either gives the target's own output (it queued: passes run at most
    max_batch_tokens) or is refused at once with RESOURCE_EXHAUSTED and a retry hint; none ends
    any other way or hangs; live sessions and KV memory stay within their limits throughout."""
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    prompts, max_tokens, admitted = [[5], [9], [17]], 6, 2 * FAST_TOKENS
    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, max_kv_mib=4, batch_wait_ms=0, prefix_cache_mb=0,
                                   max_sessions=admitted), model=PacedTarget()) as cloud:
        address, worker = ("127.0.0.1", cloud.running.port), cloud.running.worker
        references = [continuation(p, max_tokens, GREEDY) for p in prompts]
        peaks = {"live": 0, "kv": 0}

        async def overload():
            load = Load(None, prompts, references, max_tokens, 4, 0.0, ScriptedTarget.vocab_size,
                        ScriptedTarget.fingerprint)
            links = Links(address, rtt_ms=0)

            async def watch():
                while True:
                    peaks["live"] = max(peaks["live"], cloud.live_sessions)
                    peaks["kv"] = max(peaks["kv"], worker.kv.used_bytes)
                    await asyncio.sleep(0.005)

            watcher = asyncio.ensure_future(watch())
            try:
                return await measure_sessions(load, links, "cloud", 4 * FAST_TOKENS, timeout_s=60)
            finally:
                watcher.cancel()
                await links.close()

        sample = asyncio.run(overload())
        assert cloud.live_sessions == 0 and worker.kv.used_bytes == 0  # everything given back
    served = sample.sessions - sample.failed
    assert served >= admitted and sample.failed > 0, sample.extra
    assert sample.extra["errors"] == ["AioRpcError RESOURCE_EXHAUSTED"]  # refused, nothing else (no timeout)
    assert sample.extra["refused"] == sample.extra["refused_with_retry_hint"] == sample.failed
    assert sample.extra["identical_to_alone"] == served
    assert peaks["live"] <= admitted and peaks["kv"] <= worker.kv.capacity_bytes


def test_capacity_bench_end_to_end_on_the_tiny_models(tiny_models, tmp_path):
    """`tandem bench --capacity` with its flags: JSON, PNG, progress, exact outputs, the overload run at
    20 ms and a real llama.cpp drafter among the sessions."""
    import json
    from bench_process import pinned_bench

    done = pinned_bench("--capacity", "--capacity-rtt-ms", "0,20", "--capacity-dtypes", "fp32", "--max-tokens", "10",
                        "--prompts", "2", "--most-sessions", "2", "--min-session-tokens-per-s", "0.5",
                        "--max-ttft-s", "30", "--acceptance", "0.7", "--real-drafters", "1",
                        "--model", str(tiny_models.target_dir), "--draft-model", str(tiny_models.drafts["noisy"]),
                        "--out", str(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "capacity.json").read_text())
    assert (tmp_path / "capacity.png").stat().st_size > 0
    assert "capacity  hybrid rtt  20 ms" in done.stderr and "targets:" in done.stdout
    rows = report["capacity"]["float32"]
    assert {(r["mode"], r["rtt_ms"]) for r in rows} == {(m, t) for m in ("cloud", "hybrid") for t in (0.0, 20.0)}
    for row in rows:
        assert 0 <= row["capacity"] <= 2
        for sample in [*row["samples"], *([row["overload"]] if "overload" in row else [])]:
            assert sample["failed"] == 0 and sample["identical_to_alone"] == sample["sessions"]  # float32: exact
    real = report["clouds"]["float32"]["real_drafters"]
    assert real is not None and real["real_drafters"] == 1 and real["real_identical_to_alone"] == 1
    assert report["provenance"]["load_average_start"] and report["machine"]["load_average_end"]
