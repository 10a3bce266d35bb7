"""Every limit answers with a clear status, frees what it must, and never hangs.

Raw messages go through grpc's blocking API: grpc.aio clients may misreport a status that
races one of their writes as INTERNAL (grpc/grpc#36066).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import threading
import time

import grpc
import pytest

from cloud.cli import add_parser as add_cloud_parser
from cloud.config import CloudConfig
from common.errors import InvalidArgument
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from raw_speculate import draft, next_answer, open_request, read_answer, speculate

LIMITS = dict(max_prompt_tokens=32, max_draft_tokens=8, max_new_tokens=16, max_stop_tokens=4,
              max_context_tokens=24)
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def limited_cloud(cloud_factory):
    from cloud.limits import SessionLimits

    return cloud_factory(limits=SessionLimits(**LIMITS), max_sessions=2, max_message_bytes=4096,
                         idle_timeout_s=1.0)


def wait_for(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


CASES = {
    "prompt over the maximum": (lambda t: [open_request(t, [1] * 33)], INVALID, "prompt has 33 tokens"),
    "empty prompt": (lambda t: [open_request(t, [])], INVALID, "prompt_token_ids is empty"),
    "prompt id out of range": (lambda t: [open_request(t, [1, t.vocab_size])], INVALID, "outside the vocabulary"),
    "largest uint32 id": (lambda t: [open_request(t, [2**32 - 1])], INVALID, "outside the vocabulary"),
    "context over the maximum": (lambda t: [open_request(t, [1] * 24)], INVALID, "no room in this server's context"),
    "too many stop ids": (lambda t: [open_request(t, stop_token_ids=[1] * 5)], INVALID, "at most 4"),
    "max_new_tokens 0": (lambda t: [open_request(t, max_new_tokens=0)], INVALID, "max_new_tokens must be in"),
    "max_new_tokens over": (lambda t: [open_request(t, max_new_tokens=17)], INVALID, "max_new_tokens must be in"),
    "unknown draft mode": (lambda t: [open_request(t, draft_mode=7)], INVALID, "unknown draft_mode 7"),
    "NaN temperature": (lambda t: [open_request(t, sampling=pb.SamplingParams(temperature=math.nan))], INVALID,
                        "temperature"),
    "tokenizer mismatch": (lambda t: [open_request(t, tokenizer_fingerprint="other")],
                           grpc.StatusCode.FAILED_PRECONDITION, "tokenizer mismatch"),
    "draft before open": (lambda t: [draft(0, [1])], INVALID, "first message of a Speculate stream must be `open`"),
    "empty message": (lambda t: [pb.SpeculateRequest()], INVALID, "must be `open`"),
    "open twice": (lambda t: [open_request(t), open_request(t)], INVALID, "only `draft`, `decode` and `hint`"),
    "empty message after open": (lambda t: [open_request(t), pb.SpeculateRequest()], INVALID,
                                 "only `draft`, `decode` and `hint`"),
    "draft block over the maximum": (lambda t: [open_request(t), draft(0, [1] * 9)], INVALID, "at most 8"),
    "draft id out of range": (lambda t: [open_request(t), draft(0, [1, t.vocab_size + 5])], INVALID,
                              "outside the vocabulary"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_speculate_input_gets_a_clear_status(limited_cloud, tiny_target, case):
    build, code, message = CASES[case]
    responses, got_code, details = speculate(limited_cloud.address, build(tiny_target))
    assert (got_code, message in details) == (code, True), details
    assert len(responses) <= 1  # at most the `started` of a valid open
    wait_for(lambda: len(limited_cloud.running.registry) == 0)


def test_stale_and_replayed_blocks_get_the_defined_answer(limited_cloud, tiny_target):
    """A block that does not continue the committed sequence gets `stale`, and the session goes on."""
    first, code, _ = speculate(limited_cloud.address, [open_request(tiny_target)])
    assert code == OK
    started = first[0].started
    pos, token = started.position, started.token_id
    requests = [
        open_request(tiny_target),
        draft(pos + 5, [token]),  # from the future
        draft(pos, [token + 1]),  # wrong anchor
        draft(pos, [token]),  # the real next step
        draft(pos, [token]),  # replayed
    ]
    responses, code, details = speculate(limited_cloud.address, requests)
    assert code == OK, details
    verdicts = [r.verdict for r in responses[1:]]
    assert [v.start_position for v in verdicts] == [pos + 5, pos, pos, pos]
    assert [v.stale for v in verdicts] == [True, True, False, True]
    assert verdicts[2].HasField("next_token") and verdicts[2].forward_passes == 2
    assert verdicts[3].forward_passes == 2  # a stale block costs no forward pass


def test_undecodable_bytes_are_invalid_argument(limited_cloud):
    with grpc.insecure_channel(limited_cloud.address) as channel:
        for method, stream in (("/tandem.v1.Tandem/Speculate", True), ("/tandem.v1.Tandem/Generate", False)):
            garbage = b"\xff\xff\xff\x07"
            call = channel.stream_stream(method) if stream else channel.unary_stream(method)
            with pytest.raises(grpc.RpcError) as info:
                list(call(iter([garbage]) if stream else garbage, timeout=20))
            assert info.value.code() == INVALID and "is not a valid tandem.v1." in info.value.details()


def test_message_size_limit(limited_cloud, tiny_target):
    big_ids = [40000] * 2000  # 3 bytes each on the wire: over the 4096-byte limit
    responses, code, details = speculate(limited_cloud.address, [open_request(tiny_target, big_ids)])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
    assert responses == []


def test_session_cap(limited_cloud, tiny_target):
    async def run():
        async with grpc.aio.insecure_channel(limited_cloud.address) as channel:
            stub = pb_grpc.TandemStub(channel)
            held = []
            for _ in range(2):
                call = stub.Speculate()
                await call.write(open_request(tiny_target))
                assert (await read_answer(call)).HasField("started")
                held.append(call)
            refused = stub.Speculate()
            await refused.write(open_request(tiny_target))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await refused.read()
            for call in held:
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
            return info.value

    error = asyncio.run(run())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 concurrent sessions" in error.details()
    wait_for(lambda: len(limited_cloud.running.registry) == 0)
    assert speculate(limited_cloud.address, [open_request(tiny_target)])[1] == OK


def test_kv_memory_budget(cloud_factory, tiny_target):
    """A session reserves prompt + max_new_tokens of KV cache; past the budget: RESOURCE_EXHAUSTED."""
    from cloud.blocks import BLOCK_SIZE
    from cloud.limits import SessionLimits

    cloud = cloud_factory(max_kv_mib=1, limits=SessionLimits(max_new_tokens=4000))
    per_token = tiny_target.kv_bytes_per_token
    budget_tokens = (1 << 20) // per_token
    prompt = tiny_target.tokenize("Hello")
    big = budget_tokens * 6 // 10 - len(prompt)  # one fits, two do not
    small = budget_tokens * 3 // 10 - len(prompt)
    release = threading.Event()

    def hold(requests):
        yield from requests
        release.wait(20)

    with grpc.insecure_channel(cloud.address) as channel:
        held = pb_grpc.TandemStub(channel).Speculate(
            hold([open_request(tiny_target, prompt, max_new_tokens=big)]), timeout=30)
        assert next_answer(held).HasField("started")
        blocks = -(-(len(prompt) + big) // BLOCK_SIZE)  # memory is reserved in whole blocks
        assert cloud.running.registry.kv_reserved_bytes == blocks * BLOCK_SIZE * per_token
        _, code, details = speculate(cloud.address, [open_request(tiny_target, prompt, max_new_tokens=big)])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "not enough KV-cache memory" in details
        assert speculate(cloud.address, [open_request(tiny_target, prompt, max_new_tokens=small)])[1] == OK
        release.set()
        list(held)
    wait_for(lambda: cloud.running.registry.kv_reserved_bytes == 0 and len(cloud.running.registry) == 0)


def test_registry_reserves_each_sessions_worst_case():
    from cloud.blocks import BlockAllocator
    from cloud.registry import SessionRegistry
    from common.errors import ResourceExhausted

    class Session:
        def __init__(self, max_kv_tokens):
            self.max_kv_tokens, self.kv_tokens = max_kv_tokens, 0

    registry = SessionRegistry(max_sessions=3, pool=BlockAllocator(100, block_size=1, block_bytes=10))
    first = registry.add(Session(60))
    with pytest.raises(ResourceExhausted, match="not enough KV-cache memory"):
        registry.add(Session(50))
    registry.add(Session(40))
    assert registry.kv_reserved_bytes == 1000 and len(registry) == 2
    with pytest.raises(InvalidArgument, match="whole budget"):  # could never fit: retrying cannot help
        registry.add(Session(101))
    registry.remove(first)
    registry.remove(first)  # idempotent
    assert registry.kv_reserved_bytes == 400 and len(registry) == 1
    registry.add(Session(1))
    registry.add(Session(1))
    with pytest.raises(ResourceExhausted, match="3 concurrent sessions"):
        registry.add(Session(1))


def test_registry_reserves_whole_blocks():
    from cloud.blocks import BlockAllocator
    from cloud.registry import SessionRegistry

    class Session:
        max_kv_tokens, kv_tokens = 17, 0

    registry = SessionRegistry(max_sessions=3, pool=BlockAllocator(6, block_size=16, block_bytes=16 * 10))
    registry.add(Session())
    assert registry.kv_reserved_bytes == 2 * 16 * 10


@pytest.mark.parametrize("opened", [False, True])
def test_idle_session_times_out_and_is_freed(limited_cloud, tiny_target, opened):
    release = threading.Event()

    def requests():
        if opened:
            yield open_request(tiny_target)
        release.wait(30)  # then stay silent, without half-closing

    started = time.monotonic()
    with grpc.insecure_channel(limited_cloud.address) as channel:
        call = pb_grpc.TandemStub(channel).Speculate(requests(), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            for response in call:
                assert response.HasField("started") or response.HasField("progress")
                assert len(limited_cloud.running.registry) == 1
        release.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle timeout" in info.value.details()
    assert time.monotonic() - started < 15  # 1 s idle timeout, generous slack for a busy machine
    wait_for(lambda: len(limited_cloud.running.registry) == 0)


def test_a_client_that_stops_reading_is_timed_out_and_freed(cloud_factory, tiny_target):
    from cloud.limits import SessionLimits

    cloud = cloud_factory(idle_timeout_s=1.0, limits=SessionLimits(max_new_tokens=4000))
    # A small receive window, so the server's writes block soon after the client stops reading.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]

    async def run():
        async with grpc.aio.insecure_channel(cloud.address, options=options) as channel:
            request = pb.GenerateRequest(prompt_token_ids=tiny_target.tokenize("Hi"), max_new_tokens=4000,
                                         return_text=True)
            call = pb_grpc.TandemStub(channel).Generate(request)
            await call.read()
            await asyncio.to_thread(wait_for, lambda: len(cloud.running.registry) == 0, 30)
            received = 1
            with pytest.raises(grpc.aio.AioRpcError) as info:
                while await call.read() is not grpc.aio.EOF:  # what was buffered, then the status
                    received += 1
            return received, info.value

    received, error = asyncio.run(run())
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "accepted no message" in error.details()
    assert received < 2000  # the generation did not simply run to its end


@pytest.mark.parametrize("method", ["Speculate", "Generate"])
def test_client_cancellation_frees_the_session_promptly(cloud_factory, tiny_target, method):
    from cloud.limits import SessionLimits

    cloud = cloud_factory(limits=SessionLimits(max_new_tokens=4000))
    prompt = tiny_target.tokenize("Once upon a time")

    async def run():
        async with grpc.aio.insecure_channel(cloud.address) as channel:
            stub = pb_grpc.TandemStub(channel)
            if method == "Speculate":
                call = stub.Speculate()
                await call.write(open_request(tiny_target, prompt, max_new_tokens=4000))
            else:
                call = stub.Generate(pb.GenerateRequest(prompt_token_ids=prompt, max_new_tokens=4000))
            await call.read()
            assert len(cloud.running.registry) == 1
            call.cancel()
            cancelled = time.monotonic()
            await asyncio.to_thread(wait_for, lambda: len(cloud.running.registry) == 0)
            return time.monotonic() - cancelled

    assert asyncio.run(run()) < 5
    assert cloud.running.registry.kv_reserved_bytes == 0


def test_limit_flags_are_validated():
    parser = argparse.ArgumentParser()
    add_cloud_parser(parser.add_subparsers())

    def config(*flags):
        return CloudConfig.from_args(parser.parse_args(["cloud", *flags]))

    assert config().limits.max_draft_tokens == 64 and config().idle_timeout_s == 30
    assert config("--max-context-tokens", "128", "--idle-timeout", "0").limits.max_context_tokens == 128
    for flags in (["--max-draft-tokens", "0"], ["--max-sessions", "0"], ["--idle-timeout", "-1"],
                  ["--max-message-bytes", "10"], ["--keepalive", "0"]):
        with pytest.raises(InvalidArgument):
            config(*flags)
