"""The draft's guesses while the cloud decodes alone (DecodeHint): the pure bookkeeping on both
sides, then the cloud's answers message by message, and whole answers, which stay exactly the
target's whatever the guesses were."""

from __future__ import annotations

import asyncio

import pytest
from conftest import hf_greedy
from engine_run import generate_through
from raw_speculate import OK, open_request, speculate

from cloud.decode_hints import DEFAULT_MAX_HINTS, HintBuffer, expected_committed, hint_count
from common.errors import ProtocolError
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.wire import CloudDecode, DecodedToken, DecodeHint, FinishReason, SamplingParams
from edge.cloud_decode import DecodeRequests
from edge.decode_hints import HINT_CHUNK, LOW_WATER, HintTail

# --- the cloud's side: the one run of guesses a session holds ------------------------------------


def test_a_hint_anchored_on_the_last_committed_token_is_held_and_consumed_as_tokens_agree():
    committed = [5, 6, 7]
    hints = HintBuffer(limit=8)
    hints.add(DecodeHint(2, [7, 10, 11, 12]), committed)
    assert hints.usable(committed) == [10, 11, 12]
    committed += [10, 11]  # a step accepted two guesses
    assert hints.usable(committed) == [12]
    assert (hints.right, hints.wrong) == (2, 0)
    committed += [99]  # the cloud chose otherwise: the rest is dropped
    assert hints.usable(committed) == [] and (hints.right, hints.wrong) == (2, 1)


def test_a_hint_extends_the_held_guesses_or_replaces_them_after_its_anchor():
    committed = [1, 2]
    hints = HintBuffer(limit=8)
    hints.add(DecodeHint(1, [2, 3, 4]), committed)
    hints.add(DecodeHint(3, [4, 5, 6]), committed)  # anchored on the held guess 4: extends
    assert hints.usable(committed) == [3, 4, 5, 6]
    hints.add(DecodeHint(2, [3, 9]), committed)  # anchored on 3: replaces what followed it
    assert hints.usable(committed) == [3, 9]


@pytest.mark.parametrize("hint", [
    DecodeHint(1, [7, 3]),  # its anchor is not the committed token there: drafted after other tokens
    DecodeHint(5, [4, 5]),  # beyond what the cloud knows
], ids=["wrong-anchor", "beyond"])
def test_a_hint_that_does_not_continue_what_the_cloud_knows_is_dropped(hint):
    committed = [1, 2]
    hints = HintBuffer(limit=8)
    hints.add(DecodeHint(1, [2, 3]), committed)
    hints.add(hint, committed)
    assert hints.usable(committed) == [3]


def test_guesses_for_positions_already_committed_are_judged_at_once_and_the_limit_holds():
    committed = [1, 2, 3, 4]
    hints = HintBuffer(limit=3)
    hints.add(DecodeHint(1, [2, 3, 4, 5, 6, 7, 8]), committed)  # 3 and 4 already committed
    assert hints.usable(committed) == [5, 6, 7] and hints.right == 2  # at most 3 held


def test_the_cloud_checks_guesses_only_where_they_pay():
    step = lambda n: 0.080 + 0.013 * n  # noqa: E731 - a CPU pass: large fixed cost, small per token
    assert hint_count(0.005, 8, step, 0) == 0  # a draft that agrees with nothing: the cloud alone
    assert hint_count(0.8, 8, step, 0) >= 4
    assert hint_count(0.8, 0, step, 0) == 0
    assert hint_count(0.8, 20, lambda n: None, 0) == DEFAULT_MAX_HINTS  # no step timed yet
    for alpha in (0.1, 0.5, 0.8, 0.95):
        j = hint_count(alpha, 16, step, 4)
        best = max(expected_committed(alpha, k) / step(5 + k) for k in range(17))
        assert expected_committed(alpha, j) / step(5 + j) == pytest.approx(best)


def test_the_cloud_learns_a_poor_drafts_acceptance_without_checking_its_guesses():
    hints = HintBuffer(limit=8)
    committed = [0]
    for i in range(30):
        hints.add(DecodeHint(len(committed) - 1, [committed[-1], 1000 + i]), committed)
        committed.append(i)  # never what was guessed
    assert hints.usable(committed) == []  # judges the last guess too
    assert hints.acceptance < 0.05 and hints.wrong == 30


# --- the edge's side: its guesses, sent in few messages, judged by the committed tokens ------------


def test_guesses_go_out_with_their_anchor_at_once_while_the_cloud_holds_few_then_in_chunks():
    committed = [1, 2, 3]
    tail = HintTail(len(committed), limit=64)
    guesses = iter(range(10, 100))
    for i in range(LOW_WATER):  # the cloud holds fewer than LOW_WATER unchecked guesses: at once
        tail.append(tail.epoch, next(guesses))
        anchor = committed[-1] if i == 0 else tail.ids[i - 1]
        assert tail.to_send(committed) == DecodeHint(len(committed) - 1 + i, [anchor, tail.ids[i]])
    for _ in range(HINT_CHUNK - 1):
        tail.append(tail.epoch, next(guesses))
        assert tail.to_send(committed) is None  # fewer than a chunk
    tail.append(tail.epoch, next(guesses))
    hint = tail.to_send(committed)
    assert hint.start_position == len(committed) + LOW_WATER - 1 and hint.token_ids[1:] == tail.ids[LOW_WATER:]


def test_committed_tokens_judge_the_guesses_and_a_wrong_one_drops_the_rest():
    committed = [1, 2, 3]
    tail = HintTail(3, limit=8)
    for token in (10, 11, 12):
        tail.append(tail.epoch, token)
    tail.to_send(committed)
    assert tail.commit(3, [10, 11]) == [True, True] and tail.ids == [12] and tail.start == 5
    epoch = tail.epoch
    assert tail.commit(5, [40, 41]) == [False]  # wrong at 5; nothing held for 6
    assert (tail.ids, tail.start, tail.sent) == ([], 7, 0) and tail.epoch != epoch
    assert not tail.append(epoch, 13)  # drafted for the old context: refused


def test_tokens_beyond_the_guesses_refuse_a_guess_drafted_for_a_position_now_passed():
    tail = HintTail(3, limit=8)
    tail.append(tail.epoch, 10)
    epoch = tail.epoch
    assert tail.commit(3, [10, 11]) == [True]
    assert tail.start == 5 and not tail.append(epoch, 12)
    with pytest.raises(ValueError):
        tail.commit(9, [1])


def test_one_answer_with_hinted_tokens_retires_every_request_it_completes():
    requests = DecodeRequests()
    requests.next_request(10, 3)  # [10, 13)
    requests.next_request(10, 3)  # [13, 16)
    answer = DecodedToken(position=14, token_id=7, hinted_ids=(1, 2, 3, 4))  # positions 10..14
    assert requests.answer(answer, 10) == [1, 2, 3, 4, 7]
    assert [r.start_position for r in requests.in_flight] == [13]
    with pytest.raises(ProtocolError):  # beyond every request in flight
        requests.answer(DecodedToken(position=17, token_id=7, hinted_ids=(1, 2)), 15)


def test_a_request_is_retired_once_committed_tokens_pass_its_end_or_the_session_finishes():
    r = CloudDecode(10, 4)
    assert not r.retired(13, False) and r.retired(14, False) and r.retired(12, True)
    assert not r.retired(10, True)  # it never began


# --- the cloud, message by message ------------------------------------------------------------------


def _hint(start, ids):
    return pb.SpeculateRequest(hint=pb.DecodeHint(start_position=start, token_ids=ids))


def _decode(start, tokens):
    return pb.SpeculateRequest(decode=pb.CloudDecode(start_position=start, max_tokens=tokens))


def test_right_guesses_are_committed_in_fewer_steps_and_wrong_ones_change_nothing(tiny_cloud, tiny_target):
    prompt = tiny_target.tokenize("Hello there, limits")
    p, n = len(prompt), 12
    want = hf_greedy(tiny_target, prompt, n)  # want[i] sits at position p + i
    wrong = (want[5] + 1) % tiny_target.vocab_size
    responses, code, _ = speculate(tiny_cloud.address, [
        open_request(tiny_target, prompt, max_new_tokens=n),
        _hint(p, [want[0], *want[1:5], wrong, want[6]]),  # four right guesses, then a wrong one
        _decode(p + 1, n - 1),
    ])
    assert code == OK
    assert responses[0].started.token_id == want[0]
    decoded = [DecodedToken.from_pb(r.decoded) for r in responses[1:]]
    ids, position = [], p + 1
    for d in decoded:
        assert d.first_position == position
        ids += d.ids
        position += len(d.ids)
    assert ids == want[1:]  # the target's own tokens, wherever the guesses were right or wrong
    hinted = [d.first_position + i for d in decoded for i in range(len(d.hinted_ids))]  # their positions
    assert hinted and max(hinted) <= p + 4  # only the right guesses
    assert len(decoded) == n - 1 - len(hinted)  # one step (and message) per token, less the guessed ones
    assert decoded[-1].finish_reason == FinishReason.LENGTH
    assert decoded[-1].forward_passes == 1 + len(decoded)  # the first token's pass, then one per step


@pytest.mark.parametrize("message, detail", [
    (_hint(3, [1]), "anchor and at least one guess"),
    (_hint(3, [1, 10**9]), "outside the vocabulary"),
], ids=["no-guess", "bad-id"])
def test_malformed_hints_are_refused_with_invalid_argument(tiny_cloud, tiny_target, message, detail):
    import grpc

    _, code, details = speculate(tiny_cloud.address, [open_request(tiny_target), message])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and detail in details


# --- whole answers: the edge guessing ahead of the cloud ---------------------------------------------


async def _answer(address, drafter, prompt, mode, sampling):
    from edge.engine import GenerationRequest

    return await generate_through(address, drafter, GenerationRequest(prompt, 40, sampling), mode)


@pytest.mark.parametrize("noise", ["exact", "noisy", "wild"])
@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(0.8, 50, 1.0, seed=1234)],
                         ids=["greedy", "t0.8"])
def test_answers_with_guesses_are_the_targets_own(tiny_cloud, tiny_drafter, noise, sampling):
    from edge.engine import Mode

    drafter = tiny_drafter(noise)
    for text in ("The quick brown fox", "def fibonacci(n):\n    return"):
        prompt = drafter.tokenize(text)
        hinted = asyncio.run(_answer(tiny_cloud.address, drafter, prompt, Mode.HYBRID, sampling))
        own = asyncio.run(_answer(tiny_cloud.address, drafter, prompt, Mode.CLOUD, sampling))
        assert hinted.token_ids == own.token_ids
        s = hinted.stats
        assert s.hinted <= s.hints_sent and s.hinted <= s.cloud_decoded and s.shadow_agreed <= s.shadow_checked
        assert s.cloud_forward_passes == s.rounds == len(s.verified_blocks) + 1 + s.cloud_decoded - s.hinted


def test_a_guess_abandoned_while_it_goes_out_does_not_end_the_session(tiny_cloud, tiny_target):
    """grpc.aio cancels a whole call when a task is cancelled inside its write; the edge abandons a
    guess's write when the answer ends (edge/cloud_alone.py). The session must answer on regardless
    (it once ended with the reader gone and the answer waiting forever)."""
    from common.wire import SessionOpen, SessionStarted
    from edge.client import CloudClient

    prompt = tiny_target.tokenize("Hello there, limits")
    p, n = len(prompt), 12
    want = hf_greedy(tiny_target, prompt, n)

    async def run() -> list[int]:
        client = CloudClient(tiny_cloud.address)
        try:
            stream = client.speculate()
            await stream.open(SessionOpen(prompt_token_ids=prompt, max_new_tokens=n,
                                          tokenizer_fingerprint=tiny_target.fingerprint))
            for _ in range(20):  # abandoned at once: the cancellation lands inside the write
                guess = asyncio.ensure_future(stream.send_hint(DecodeHint(p, [want[0], want[1]])))
                await asyncio.sleep(0)
                guess.cancel()
                await asyncio.gather(guess, return_exceptions=True)
            await stream.send_decode(CloudDecode(p + 1, n - 1))
            ids = []
            while (answer := await stream.read()) is not None:
                ids += [answer.token_id] if isinstance(answer, SessionStarted) else getattr(answer, "ids", [])
                if len(ids) == n:
                    await stream.done_writing()
            return ids
        finally:
            await client.close()

    assert asyncio.run(asyncio.wait_for(run(), 60)) == want
