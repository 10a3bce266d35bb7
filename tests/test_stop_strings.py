"""Stop strings: the scanner's streaming rules, then the cloud and the edge applying them."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conftest import hf_greedy
from test_sampled_exact import generate_many

from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from common.stop import StopScanner
from common.wire import DraftMode, FinishReason
from edge import AsyncTandemClient
from edge.config import EdgeConfig
from edge.engine import Mode

PROMPT = "The quick brown fox"
NEW_TOKENS = 30


def scan(stops, pieces) -> tuple[str, str | None]:
    scanner = StopScanner(stops)
    released = "".join(scanner.push(piece) for piece in pieces) + scanner.flush()
    return released, scanner.hit


@pytest.mark.parametrize("pieces", [["hello wor", "ld. Bye"], ["hel", "lo", " w", "o", "rld. Bye"], ["hello world. Bye"]])
def test_scanner_cuts_before_the_first_stop_wherever_the_pieces_split(pieces):
    assert scan(["world", "Bye"], pieces) == ("hello ", "world")
    assert scan(["Bye", "o w"], pieces) == ("hell", "o w")  # the earliest occurrence wins
    assert scan(["xyz"], pieces) == ("hello world. Bye", None)  # nothing held back at the end
    assert scan([], pieces) == ("hello world. Bye", None)


def test_scanner_holds_back_only_a_possible_stop_prefix():
    scanner = StopScanner(["</end>"])
    assert scanner.push("text </e") == "text "  # "</e" may begin the stop string
    assert scanner.push("x") == "</ex"  # it did not
    assert scanner.push("</en") == ""
    assert scanner.push("d> more") == "" and scanner.hit == "</end>"
    assert scanner.push("after") == "" and scanner.flush() == ""


def text_of(drafter, token_ids) -> str:
    return b"".join(drafter.token_bytes(t) for t in token_ids).decode(errors="replace")


def stop_inside(text: str) -> str:
    """A 3-character stretch from the middle third of `text`, free of replacement characters."""
    for start in range(len(text) // 3, len(text) - 3):
        candidate = text[start:start + 3]
        if "\ufffd" not in candidate and candidate.strip():
            return candidate
    raise AssertionError(f"no usable stop string in {text!r}")


def expected_cut(drafter, token_ids: list[int], stop: str) -> tuple[str, list[int]]:
    """The text before the first occurrence, and the tokens up to the one completing it."""
    text = text_of(drafter, token_ids)
    for n in range(1, len(token_ids) + 1):
        if stop in text_of(drafter, token_ids[:n]):
            return text[: text.index(stop)], token_ids[:n]
    raise AssertionError("the stop string is not in the text")


@pytest.mark.parametrize("mode", ["hybrid", "cloud", "edge"])
def test_generation_ends_at_the_stop_string_and_the_text_is_cut_before_it(tiny_cloud, tiny_models, tiny_target,
                                                                          tiny_drafter, mode):
    config = EdgeConfig(cloud=tiny_cloud.address, draft_model=str(tiny_models.drafts["noisy"]), threads=1)

    async def main():
        async with AsyncTandemClient(config=config, mode=mode) as tandem:
            free = await tandem.complete(PROMPT, max_tokens=NEW_TOKENS)
            stop = stop_inside(free.text)
            return free, stop, await tandem.complete(PROMPT, max_tokens=NEW_TOKENS, stop=["\x00never", stop])

    free, stop, cut = asyncio.run(main())
    drafter = tiny_drafter("noisy")
    if mode != "edge":
        assert free.token_ids == hf_greedy(tiny_target, drafter.tokenize(PROMPT), NEW_TOKENS)
    text, token_ids = expected_cut(drafter, free.token_ids, stop)
    assert cut.finish_reason == "stop" and free.finish_reason == "length"
    assert cut.text == text and stop not in cut.text
    assert cut.token_ids == token_ids  # generation stopped at the token completing the stop string


@pytest.mark.parametrize("mode,draft_mode", [(Mode.HYBRID, DraftMode.TOKEN_IDS), (Mode.HYBRID, DraftMode.SPARSE_Q),
                                             (Mode.CLOUD, DraftMode.TOKEN_IDS)])
def test_the_cloud_stops_sampled_generation_at_the_completing_token(tiny_cloud, tiny_drafter, mode, draft_mode):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    sampling = dict(temperature=1.0, top_k=0, top_p=0.95, max_new_tokens=NEW_TOKENS, draft_mode=draft_mode,
                    draft_tokens=5, mode=mode)
    free = asyncio.run(generate_many(tiny_cloud.address, drafter, prompt, [21], **sampling))[0]
    stop = stop_inside(text_of(drafter, free.token_ids))
    cut = asyncio.run(generate_many(tiny_cloud.address, drafter, prompt, [21], stop_strings=[stop], **sampling))[0]
    assert cut.token_ids == expected_cut(drafter, free.token_ids, stop)[1]
    assert cut.finish_reason == FinishReason.STOP  # said by the cloud: the engine has no text


@pytest.mark.parametrize("stops,message", [
    (["ok"] * 17, "at most 16"),
    ([""], "1 to 256 bytes"),
    (["x" * 257], "1 to 256 bytes"),
])
def test_bad_stop_strings_are_refused(tiny_cloud, tiny_target, stops, message):
    request = pb.SessionOpen(prompt_token_ids=[1, 2, 3], max_new_tokens=4, stop_strings=stops,
                             tokenizer_fingerprint=tiny_target.fingerprint)
    with grpc.insecure_channel(tiny_cloud.address) as channel:
        call = pb_grpc.TandemStub(channel).Speculate(iter([pb.SpeculateRequest(open=request)]), timeout=30)
        with pytest.raises(grpc.RpcError) as failure:
            list(call)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in failure.value.details()


def test_cloud_and_edge_render_every_token_alike(tiny_target, tiny_drafter):
    """Both sides must see the same text, or they would disagree on where a stop string is."""
    drafter = tiny_drafter("noisy")
    differing = [t for t in range(tiny_target.vocab_size) if tiny_target.token_bytes(t) != drafter.token_bytes(t)]
    assert not differing, [(t, tiny_target.token_bytes(t), drafter.token_bytes(t)) for t in differing[:5]]
    assert any(len(drafter.token_bytes(t)) > 32 for t in range(drafter.vocab_size))  # long pieces survive
