"""The cloud service over real gRPC: health, reflection, Info, and clear statuses for bad input."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from edge.client import CloudClient
from edge.engine import EdgeEngine
from raw_speculate import open_request, speculate


@pytest.fixture
def stub(tiny_cloud):
    with grpc.insecure_channel(tiny_cloud.address) as channel:
        yield pb_grpc.TandemStub(channel), channel


def test_health_serving(tiny_cloud, stub):
    _, channel = stub
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tandem.v1.Tandem"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(stub):
    _, channel = stub
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(reflection.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {"tandem.v1.Tandem", "grpc.health.v1.Health"} <= names


def test_info_describes_the_target(tiny_target, stub):
    info = stub[0].Info(pb.InfoRequest(), timeout=5)
    assert info.vocab_size == tiny_target.vocab_size
    assert info.tokenizer_fingerprint == tiny_target.fingerprint
    assert list(info.eos_token_ids) == tiny_target.eos_token_ids
    assert info.max_context == tiny_target.max_context
    assert info.limits.max_draft_tokens > 0


def test_mismatched_tokenizer_refused_by_cloud(tiny_cloud, tiny_target):
    request = open_request(tiny_target, [1, 2, 3], tokenizer_fingerprint="probe-v1:not-this-one",
                           draft_model_name="odd-draft")
    responses, code, details = speculate(tiny_cloud.address, [request], timeout=30)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and not responses
    assert "odd-draft" in details and tiny_target.name in details


def test_a_draft_of_another_vocabulary_drafts_for_a_remote_cloud(tiny_cloud, tiny_drafter, tiny_target, tmp_path,
                                                                  monkeypatch):
    """A tokenizer mismatch is no refusal any more: with no local copy of the target's tokenizer the
    edge fetches it from the cloud (GetTokenizer) and drafts across vocabularies; the answer is the target's."""
    from conftest import hf_greedy

    from edge.cross_vocab import CrossVocabDrafter
    from edge.engine import GenerationRequest, Mode

    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path))
    drafter = tiny_drafter("mismatched")  # the target's pieces, shuffled: every id means another token
    assert drafter.fingerprint != tiny_target.fingerprint
    prompt = tiny_target.encode("Hello there")

    async def generate():
        client = CloudClient(tiny_cloud.address)
        try:
            engine = EdgeEngine(drafter, client)
            await engine.connect()
            return engine, await engine.generate_to_end(GenerationRequest(prompt, 16), Mode.HYBRID)
        finally:
            await client.close()

    engine, generation = asyncio.run(generate())
    assert isinstance(engine.drafter, CrossVocabDrafter)
    assert generation.token_ids == hf_greedy(tiny_target, prompt, 16)


@pytest.mark.parametrize("case", ["empty_prompt", "id_out_of_range", "zero_max_new_tokens", "draft_first",
                                  "open_twice", "block_too_long", "draft_id_out_of_range"])
def test_bad_input_gets_invalid_argument(tiny_cloud, tiny_target, case):
    vocab = tiny_target.vocab_size
    good_open = open_request(tiny_target, [1, 2, 3])
    requests = {
        "empty_prompt": [open_request(tiny_target, [])],
        "id_out_of_range": [open_request(tiny_target, [1, vocab])],
        "zero_max_new_tokens": [open_request(tiny_target, [1, 2, 3], max_new_tokens=0)],
        "draft_first": [pb.SpeculateRequest(draft=pb.DraftBlock(start_position=0, token_ids=[1]))],
        "open_twice": [good_open, good_open],
        "block_too_long": [good_open, pb.SpeculateRequest(draft=pb.DraftBlock(start_position=3,
                                                                              token_ids=[1] * 1000))],
        "draft_id_out_of_range": [good_open, pb.SpeculateRequest(draft=pb.DraftBlock(start_position=3,
                                                                                     token_ids=[1, vocab + 5]))],
    }[case]
    _, code, details = speculate(tiny_cloud.address, requests, timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details


def test_stale_and_reordered_blocks_get_stale_verdicts(tiny_cloud, tiny_target):
    """A block that does not continue the committed tokens is answered `stale`, without a forward pass."""
    prompt = [5, 6, 7]
    first = speculate(tiny_cloud.address, [open_request(tiny_target, prompt)], timeout=30)[0][0].started
    t0 = first.token_id
    blocks = [
        pb.DraftBlock(start_position=3, token_ids=[t0 + 1, 9]),  # wrong anchor
        pb.DraftBlock(start_position=10, token_ids=[1, 2]),  # from the future
        pb.DraftBlock(start_position=0, token_ids=[4]),  # replayed prompt, wrong token
        pb.DraftBlock(start_position=3, token_ids=[t0]),  # correct: one decoding step
    ]
    requests = [open_request(tiny_target, prompt)] + [pb.SpeculateRequest(draft=b) for b in blocks]
    responses, code, _ = speculate(tiny_cloud.address, requests, timeout=30)
    assert code == grpc.StatusCode.OK
    verdicts = [r.verdict for r in responses[1:]]
    assert [v.start_position for v in verdicts] == [b.start_position for b in blocks]
    assert [v.stale for v in verdicts] == [True, True, True, False]
    assert [v.forward_passes for v in verdicts] == [1, 1, 1, 2]
    assert verdicts[3].HasField("next_token")
