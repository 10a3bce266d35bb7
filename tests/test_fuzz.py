"""Hypothesis drives Speculate and Generate with random and malformed input against a real server.

Each case must end with a defined status (never INTERNAL, UNKNOWN or a hang), every answer
must keep the protocol's invariants, and greedy sessions must commit exactly the target's
own tokens. Afterwards the server must still be healthy and generate normally.

Some draft blocks are *adaptive*: built from the cloud's latest answer, so they continue the
committed sequence and really get verified (accepted, rejected, finished), rather than only
bouncing off validation.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest
from conftest import generate_ids, hf_greedy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.limits import SessionLimits
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc

LIMITS = SessionLimits(max_prompt_tokens=24, max_draft_tokens=6, max_new_tokens=12, max_draft_top_k=4,
                       max_stop_tokens=4, max_context_tokens=40)
DEFINED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
VOCAB = 49152  # the tiny target's (SmolLM2's) vocabulary; checked against the model below
SPECULATE = "/tandem.v1.Tandem/Speculate"
FUZZ_SETTINGS = settings(max_examples=200, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_cloud(tiny_target):
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    assert tiny_target.vocab_size == VOCAB
    config = CloudConfig(host="127.0.0.1", port=0, limits=LIMITS, max_sessions=4, max_message_bytes=1 << 16,
                         idle_timeout_s=10.0)
    with EmbeddedCloud(config, model=tiny_target) as cloud, grpc.insecure_channel(cloud.address) as channel:
        yield cloud, channel


# --- strategies -------------------------------------------------------------------------------

token_ids = st.one_of(st.integers(0, 300), st.integers(0, VOCAB - 1), st.integers(VOCAB, 2**32 - 1))
mostly_valid_ids = st.one_of(st.integers(0, 300), st.integers(0, VOCAB - 1)) | token_ids
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
sampling = st.builds(
    pb.SamplingParams,
    temperature=st.one_of(st.just(0.0), st.just(0.0), st.floats(0.125, 2.0, width=32), floats),
    top_k=st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
    top_p=st.one_of(st.just(1.0), floats),
    seed=st.integers(0, 2**64 - 1),
)


@st.composite
def random_opens(draw, fingerprint: str):
    return pb.SessionOpen(
        prompt_token_ids=draw(st.lists(mostly_valid_ids, max_size=30)),
        sampling=draw(sampling),
        max_new_tokens=draw(st.one_of(st.integers(1, 12), st.integers(0, 2**32 - 1))),
        stop_token_ids=draw(st.lists(mostly_valid_ids, max_size=5)),
        tokenizer_fingerprint=draw(st.sampled_from([fingerprint, fingerprint, fingerprint, "", "bogus"])),
        draft_model_name=draw(st.text(max_size=20)),
        draft_mode=draw(st.sampled_from([0, 1, 1, 2, 2, 3, 2**31 - 1])),
        resume_token_ids=draw(st.lists(mostly_valid_ids, max_size=3)),
    )


@st.composite
def valid_opens(draw, fingerprint: str):
    """Opens the server must accept, so that the blocks after them get verified."""
    valid_id = st.integers(0, VOCAB - 1)
    return pb.SessionOpen(
        prompt_token_ids=draw(st.lists(valid_id, min_size=1, max_size=LIMITS.max_prompt_tokens - 4)),
        sampling=pb.SamplingParams(temperature=draw(st.sampled_from([0.0, 0.0, 0.7, 1.5])),
                                   top_k=draw(st.sampled_from([0, 0, 5])), top_p=draw(st.sampled_from([1.0, 0.9])),
                                   seed=draw(st.integers(0, 2**64 - 1))),
        max_new_tokens=draw(st.integers(3, LIMITS.max_new_tokens)),
        stop_token_ids=draw(st.lists(valid_id, max_size=2)),
        tokenizer_fingerprint=fingerprint,
        draft_mode=draw(st.sampled_from([0, 1, 2])),
        resume_token_ids=draw(st.lists(valid_id, max_size=2)),
    )


def opens(fingerprint: str):
    return st.one_of(valid_opens(fingerprint), valid_opens(fingerprint), valid_opens(fingerprint),
                     random_opens(fingerprint)).map(lambda o: pb.SpeculateRequest(open=o))


sparse_dists = st.lists(st.builds(pb.SparseDist, token_ids=st.lists(token_ids, max_size=5),
                                  probs_u16=st.lists(st.integers(0, 70000), max_size=5)), max_size=7)
raw_drafts = st.builds(pb.DraftBlock, start_position=st.one_of(st.integers(0, 60), st.integers(0, 2**32 - 1)),
                       token_ids=st.lists(token_ids, max_size=8), draft_dists=sparse_dists)


@dataclass(frozen=True)
class Adaptive:
    """A block anchored at the cloud's last committed token.

    In a greedy session its first `oracle` drafts are the target's own next tokens (so they
    are accepted), then come `drafts`; `dists` sends a one-hot q with each draft.
    """

    oracle: int
    drafts: list[int]
    dists: bool


adaptive = st.builds(Adaptive, oracle=st.integers(0, 5), drafts=st.lists(st.integers(0, 400), max_size=3),
                     dists=st.booleans())
garbage = st.binary(min_size=1, max_size=12)
malformed = st.one_of(raw_drafts.map(lambda d: pb.SpeculateRequest(draft=d)), st.just(pb.SpeculateRequest()),
                      garbage)
# Mostly blocks that get verified, sometimes one that should end the stream.
later_messages = st.one_of(adaptive, adaptive, adaptive, adaptive, adaptive, malformed)


def sequences(fingerprint: str):
    session = st.tuples(opens(fingerprint), st.lists(later_messages, min_size=1, max_size=6))
    anything = st.lists(st.one_of(opens(fingerprint), later_messages, malformed), min_size=1, max_size=6)
    return st.one_of(session.map(lambda t: [t[0], *t[1]]), session.map(lambda t: [t[0], *t[1]]), anything)


# --- one fuzzed stream ------------------------------------------------------------------------


@dataclass
class Exchange:
    """What was sent and answered on one Speculate stream."""

    sent: list = field(default_factory=list)  # pb messages (or bytes) in order
    responses: list = field(default_factory=list)
    committed: list[int] = field(default_factory=list)  # tokens the cloud committed, as the client tracks them
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""


def run_stream(channel, messages, target) -> Exchange:
    """Sends `messages` on one stream, building adaptive blocks from the cloud's answers."""
    exchange = Exchange()
    answers: queue.Queue = queue.Queue()
    done = threading.Event()

    def await_answer(expected: int) -> bool:
        while len(exchange.responses) < expected:
            if done.is_set():
                return False
            try:
                answers.get(timeout=0.05)
            except queue.Empty:
                pass
        return True

    def requests():
        for message in messages:
            if isinstance(message, Adaptive):
                # Needs every earlier message answered, and a committed token to anchor on.
                if not await_answer(len(exchange.sent)) or not exchange.committed:
                    return
                anchor = len(exchange.committed) - 1
                drafts = message.drafts
                if message.oracle and not exchange.sent[0].open.sampling.temperature > 0:
                    drafts = hf_greedy(target, exchange.committed, message.oracle) + drafts
                drafts = drafts[: LIMITS.max_draft_tokens - 1]
                dists = [pb.SparseDist(token_ids=[x], probs_u16=[65536]) for x in drafts] if message.dists else []
                message = pb.SpeculateRequest(draft=pb.DraftBlock(
                    start_position=anchor, token_ids=[exchange.committed[-1], *drafts], draft_dists=dists))
            raw = message if isinstance(message, bytes) else message.SerializeToString()
            exchange.sent.append(parsed(raw))
            yield raw

    call = channel.stream_stream(SPECULATE, request_serializer=None,
                                 response_deserializer=pb.SpeculateResponse.FromString)
    try:
        for response in call(requests(), timeout=60):
            if response.HasField("progress"):  # the acknowledgement, and progress of slow passes
                continue
            track(exchange, response)
            exchange.responses.append(response)
            answers.put(None)
    except grpc.RpcError as exc:
        exchange.code, exchange.details = exc.code(), exc.details()
    finally:
        done.set()
    return exchange


def parsed(raw: bytes):
    """What the server will read from `raw`: a SpeculateRequest, or the bytes when they do not parse."""
    try:
        return pb.SpeculateRequest.FromString(raw)
    except Exception:  # noqa: BLE001 - any parse failure is the point of the garbage
        return raw


def track(exchange: Exchange, response: pb.SpeculateResponse) -> None:
    """Extends the client's view of the committed tokens from one answer."""
    if response.HasField("started"):
        open_ = exchange.sent[0].open
        exchange.committed = [*open_.prompt_token_ids, *open_.resume_token_ids]
        if response.started.HasField("token_id"):
            exchange.committed.append(response.started.token_id)
        return
    verdict = response.verdict
    block = exchange.sent[len(exchange.responses)].draft
    if verdict.stale:
        return
    overlap = len(exchange.committed) - block.start_position
    drafts = list(block.token_ids[overlap:])
    exchange.committed += drafts[: verdict.accepted_count]
    if verdict.HasField("next_token"):
        exchange.committed.append(verdict.next_token)


def check_invariants(exchange: Exchange, target) -> None:
    assert exchange.code in DEFINED, (exchange.code, exchange.details)
    sent, responses = exchange.sent, exchange.responses
    assert len(responses) <= len(sent)
    if not responses:
        return
    first = sent[0]
    assert isinstance(first, pb.SpeculateRequest) and first.HasField("open")
    assert responses[0].HasField("started")
    open_ = first.open
    assert responses[0].started.position == len(open_.prompt_token_ids) + len(open_.resume_token_ids)
    # The fuzzed cloud keeps its prefix cache on, so a repeated prompt's prefill (and a first
    # plain decoding step) may be served from it without a forward pass; its output is still checked.
    passes = responses[0].started.forward_passes
    assert passes in (0, 1)
    finished = responses[0].started.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    for message, response in zip(sent[1:], responses[1:]):
        assert response.HasField("verdict") and message.HasField("draft")
        verdict, block = response.verdict, message.draft
        assert verdict.start_position == block.start_position
        assert verdict.accepted_count <= max(0, len(block.token_ids) - 1)
        if finished:
            assert verdict.stale  # nothing is verified after the finish
        assert verdict.forward_passes - passes in ((0,) if verdict.stale else (0, 1))
        passes = verdict.forward_passes
        finished = finished or verdict.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    if exchange.code == grpc.StatusCode.OK:
        assert len(responses) == len(sent)  # every block answered
    greedy = not open_.sampling.temperature > 0  # 0 and -0 are greedy
    if greedy:
        context = [*open_.prompt_token_ids, *open_.resume_token_ids]
        generated = exchange.committed[len(context):]
        assert generated == hf_greedy(target, context, len(generated))[: len(generated)]
    generated_total = len(exchange.committed) - len(open_.prompt_token_ids)
    assert generated_total <= open_.max_new_tokens
    assert len(exchange.committed) <= LIMITS.max_context_tokens


# --- the tests --------------------------------------------------------------------------------


def test_fuzz_speculate(fuzz_cloud, tiny_target, tiny_drafter):
    cloud, channel = fuzz_cloud
    seen = Counter()

    @FUZZ_SETTINGS
    @given(messages=sequences(tiny_target.fingerprint))
    def case(messages):
        exchange = run_stream(channel, messages, tiny_target)
        check_invariants(exchange, tiny_target)
        seen[exchange.code.name] += 1
        for response, message in zip(exchange.responses[1:], exchange.sent[1:]):
            verdict = response.verdict
            if not verdict.stale and len(message.draft.token_ids) > 1:
                drafts = len(message.draft.token_ids) - 1
                seen["accepted" if verdict.accepted_count else "rejected"] += 1
                seen["partly" if 0 < verdict.accepted_count < drafts else "whole"] += 1
            seen["stale" if verdict.stale else "verified"] += 1

    case()
    # The fuzzer reached both sides of validation, and real verification: drafts accepted and rejected.
    assert all(seen[key] for key in ("OK", "INVALID_ARGUMENT", "accepted", "rejected", "stale", "verified")), seen
    assert_still_healthy(cloud, channel, tiny_target, tiny_drafter)


def test_fuzz_generate(fuzz_cloud, tiny_target, tiny_drafter):
    cloud, channel = fuzz_cloud
    stub = pb_grpc.TandemStub(channel)
    seen = Counter()

    @settings(FUZZ_SETTINGS, max_examples=60)
    @given(request=st.builds(
        pb.GenerateRequest,
        prompt_token_ids=st.lists(mostly_valid_ids, max_size=30),
        prompt_text=st.one_of(st.just(""), st.text(max_size=40)),
        sampling=sampling,
        max_new_tokens=st.one_of(st.integers(0, 12), st.integers(0, 2**32 - 1)),
        stop_token_ids=st.lists(mostly_valid_ids, max_size=5),
        return_text=st.booleans(),
    ))
    def case(request):
        responses = []
        try:
            for response in stub.Generate(request, timeout=60):
                responses.append(response)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        assert code in DEFINED
        seen[code.name] += 1
        if code == grpc.StatusCode.OK:
            progress = [r.HasField("progress") for r in responses]
            assert progress[0] and progress == sorted(progress, reverse=True)  # acknowledged, then tokens
            responses = responses[sum(progress):]
            positions = [r.position for r in responses]
            assert positions == list(range(positions[0], positions[0] + len(responses)))
            finishes = [r.finish_reason != pb.FINISH_REASON_UNSPECIFIED for r in responses]
            assert finishes[-1] and not any(finishes[:-1])
            assert len(responses) <= request.max_new_tokens

    case()
    # Random requests are mostly invalid; one plainly valid request proves the happy path is reached.
    case.hypothesis.inner_test(pb.GenerateRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=4))
    assert seen["OK"] and seen["INVALID_ARGUMENT"], seen
    assert_still_healthy(cloud, channel, tiny_target, tiny_drafter)


def assert_still_healthy(cloud, channel, target, tiny_drafter) -> None:
    import asyncio
    import time

    from edge.client import CloudClient

    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    deadline = time.monotonic() + 10
    while len(cloud.running.registry) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(cloud.running.registry) == 0 and cloud.running.registry.kv_reserved_bytes == 0

    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize("After the storm")

    async def normal():
        return await generate_ids(CloudClient(cloud.address), drafter, prompt, LIMITS.max_new_tokens)

    assert asyncio.run(normal()).token_ids == hf_greedy(target, prompt, LIMITS.max_new_tokens)
