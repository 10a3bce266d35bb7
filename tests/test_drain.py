"""Drain, in one process: a replica that drains tells its live sessions to move (DrainNotice),
refuses new ones with UNAVAILABLE, reports NOT_SERVING, and has no session left after.
And the pure parts of many replicas: --cloud values, the resume window."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from raw_speculate import draft, next_answer, open_request

from common.channel import channel_target, split_cloud
from common.errors import CloudUnavailable, InvalidArgument
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from edge.client import NoConnection
from edge.resume import ResumeWindow


def test_drain_moves_live_sessions_and_refuses_new_ones(cloud_factory, tiny_target):
    cloud = cloud_factory(replica_name="replica-a")
    requests: queue.Queue = queue.Queue()
    responses = []
    with grpc.insecure_channel(cloud.address) as channel:
        stub = pb_grpc.TandemStub(channel)
        requests.put(open_request(tiny_target, max_new_tokens=64))
        call = stub.Speculate(iter(requests.get, None), timeout=30)
        started = next_answer(call).started
        assert started.replica == "replica-a"
        requests.put(draft(started.position, [started.token_id]))  # one plain step: a live session
        responses.append(next_answer(call))
        assert cloud.live_sessions == 1

        drained = threading.Thread(target=cloud._loop.run, args=(cloud.running.drain(10.0),))
        began = time.monotonic()
        drained.start()
        notice = next_answer(call)  # the session is told at once, while it waits for the edge's next block
        assert notice.WhichOneof("kind") == "drain"
        assert notice.drain.replica == "replica-a" and notice.drain.reason
        requests.put(None)
        assert list(call) == [] and call.code() == grpc.StatusCode.OK
        drained.join(10)
        # It did not wait out the drain timeout (10 s): the session left at once. The 5 s bound is
        # the margin a loaded 2-core machine keeps for a drain that takes milliseconds idle.
        assert time.monotonic() - began < 5
        assert cloud.live_sessions == 0
        assert cloud.running.metrics.registry.get_sample_value("tandem_drain_notices_total") == 1

        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tandem.v1.Tandem"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Speculate(iter([open_request(tiny_target)]), timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in refused.value.details()
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Generate(pb.GenerateRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=4), timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert responses[0].verdict.start_position == started.position


def test_generate_resumes_at_the_position_after_the_resumed_tokens(cloud_factory, tiny_target):
    cloud = cloud_factory()
    prompt = tiny_target.tokenize("Hello there, limits")
    with grpc.insecure_channel(cloud.address) as channel:
        stub = pb_grpc.TandemStub(channel)
        whole = [r for r in stub.Generate(pb.GenerateRequest(prompt_token_ids=prompt, max_new_tokens=8), timeout=30)
                 if not r.HasField("progress")]  # the cloud's acknowledgement comes first
        ids = [r.token_id for r in whole if r.HasField("token_id")]
        rest = [r for r in stub.Generate(pb.GenerateRequest(prompt_token_ids=prompt, max_new_tokens=8,
                                                            resume_token_ids=ids[:3]), timeout=30)
                if not r.HasField("progress")]
    assert whole[0].replica and whole[0].replica == rest[0].replica and not whole[1].replica
    assert rest[0].position == len(prompt) + 3
    assert [r.token_id for r in rest if r.HasField("token_id")] == ids[3:]
    assert rest[-1].finish_reason == whole[-1].finish_reason
    sample = cloud.running.metrics.registry.get_sample_value
    assert sample("tandem_resumed_sessions_total", {"rpc": "Generate"}) == 1
    assert sample("tandem_resumed_sessions_total", {"rpc": "Speculate"}) == 0


@pytest.mark.parametrize("cloud, target, balanced", [
    ("10.0.0.1:50051", "10.0.0.1:50051", False),
    ("lb.example.com:443", "lb.example.com:443", False),
    ("127.0.0.1:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2", True),
    ("localhost:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2", True),
    ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2", True),
    ("dns:///cloud.internal:50051", "dns:///cloud.internal:50051", True),
    ("ipv4:10.0.0.1:1,10.0.0.2:1", "ipv4:10.0.0.1:1,10.0.0.2:1", True),
])
def test_cloud_values_become_grpc_targets(cloud, target, balanced):
    assert channel_target(cloud) == (target, balanced)


@pytest.mark.parametrize("cloud", ["127.0.0.1:1,,127.0.0.1:2", "127.0.0.1:1,nohost", "127.0.0.1:1,[::1]:2",
                                   "127.0.0.1:1,127.0.0.1:port"])
def test_bad_cloud_lists_are_clear_errors(cloud):
    with pytest.raises(InvalidArgument, match="--cloud|cloud address"):
        channel_target(cloud)


def test_split_cloud():
    assert split_cloud("a:1, b:2") == ["a:1", "b:2"]


class FakeClock:
    """Time that passes only when the window pauses: the test needs no real time."""

    def __init__(self):
        self.now = 100.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_resume_window_gives_up_after_its_window_and_restarts_on_progress():
    async def scenario():
        clock = FakeClock()
        window = ResumeWindow(window_s=0.3, first_delay_s=0.05, max_delay_s=0.1, clock=clock, sleep=clock.sleep)
        assert window.remaining_s() is None
        with pytest.raises(CloudUnavailable, match="broke after 5 token"):
            while True:
                await window.pause_or_raise(CloudUnavailable("gone"), tokens=5)
                assert 0 < window.remaining_s() <= 0.3
        # Pauses double up to their cap; the next one would have passed the window's end (0.35 > 0.3).
        assert clock.pauses == pytest.approx([0.05, 0.1, 0.1])
        assert clock.now - 100.0 == pytest.approx(0.25)
        window.progressed()  # a replica answered: a new break gets a whole window
        assert window.remaining_s() is None
        await window.pause_or_raise(CloudUnavailable("gone"), tokens=5)
        assert clock.pauses[-1] == pytest.approx(0.05)  # a whole new window, from the first pause again
        assert window.remaining_s() == pytest.approx(0.3 - 0.05)
        with pytest.raises(NoConnection):  # no replica to connect to within the connect timeout: final
            await ResumeWindow(window_s=10).pause_or_raise(NoConnection("cannot reach"), tokens=0)

    asyncio.run(scenario())


def test_round_robin_skips_a_replica_that_is_not_serving(cloud_factory):
    """Client-side balancing watches grpc.health.v1: a NOT_SERVING replica leaves the rotation."""
    from grpc_health.v1 import health_pb2 as hpb

    from cloud.server import SERVICE_NAME
    from edge.client import CloudClient

    a, b = cloud_factory(replica_name="a"), cloud_factory(replica_name="b")

    async def replicas_answering(client, calls=12) -> set[str]:
        return {(await client.info()).replica for _ in range(calls)}

    async def scenario():
        client = CloudClient(f"{a.address},{b.address}", connect_timeout_s=10)
        try:
            assert await replicas_answering(client) == {"a", "b"}
            not_serving = a.running.health.set(SERVICE_NAME, hpb.HealthCheckResponse.NOT_SERVING)
            await asyncio.to_thread(a._loop.run, not_serving)  # on a's own event loop
            deadline = time.monotonic() + 10
            while (seen := await replicas_answering(client)) != {"b"} and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert seen == {"b"}
        finally:
            await client.close()

    asyncio.run(scenario())
