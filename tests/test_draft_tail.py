"""The speculative tail's bookkeeping (edge/draft_tail.py), driven by hand: no model, no
stream, no thread, no clock. The end-to-end tests (test_speculative_exact.py,
test_pipelined_relay.py) prove the wiring; these prove the rules."""

import pytest

from common.errors import ProtocolError
from common.wire import DraftBlock, Verdict
from edge.draft_tail import DraftTail

PROMPT = [1, 2, 3]


def started(first: int = 10) -> DraftTail:
    book = DraftTail(PROMPT)
    assert book.start(len(PROMPT), first) == [first]
    return book


def draft(book: DraftTail, *tokens: int) -> None:
    for token in tokens:
        assert book.append(book.epoch, token)


def verdict(block: DraftBlock, accepted: int, next_token: int | None, stale: bool = False) -> Verdict:
    return Verdict(start_position=block.start_position, accepted_count=accepted, next_token=next_token, stale=stale)


def test_a_block_runs_from_its_anchor_to_the_end_of_the_tail():
    book = started()
    draft(book, 11, 12)
    block = book.cut_block(sent_at=0.0, with_dists=False)
    assert block == DraftBlock(start_position=3, token_ids=[10, 11, 12])
    assert book.sent_upto == 6 and len(book.in_flight) == 1
    assert book.pending_drafts() == -1 and book.next_is_guess()  # the next token guesses the bonus


def test_all_accepted_commits_drafts_and_bonus_without_reset():
    book = started()
    draft(book, 11, 12)
    block = book.cut_block(0.0, False)
    draft(book, 13)  # the guess of the bonus token, right
    epoch = book.epoch
    judged = book.judge(verdict(block, accepted=2, next_token=13))
    assert (judged.drafts, judged.accepted, judged.chosen, judged.reset) == ([11, 12], [11, 12], [13], False)
    assert book.committed == PROMPT + [10, 11, 12, 13]
    assert book.epoch == epoch and book.tail == book.committed


def two_blocks_first_rejected():
    book = started()
    draft(book, 11, 12)
    first = book.cut_block(0.0, False)
    draft(book, 13, 14)  # 13 guesses the bonus, 14 is a draft
    second = book.cut_block(0.0, False)
    assert second.start_position == 5 and second.token_ids == [12, 13, 14]
    epoch = book.epoch
    judged = book.judge(verdict(first, accepted=1, next_token=99))  # rejects 12
    assert book.epoch == epoch + 1
    return book, judged, second


def test_a_disagreeing_verdict_resets_the_tail_and_dooms_later_blocks():
    book, judged, second = two_blocks_first_rejected()
    assert judged.committed == [11, 99] and judged.reset
    assert book.tail == book.committed == PROMPT + [10, 11, 99]
    assert book.sent_upto == len(book.tail)
    assert book.in_flight[0].doomed and not book.awaiting_bonus()
    stale = book.judge(verdict(second, 0, None, stale=True))
    assert stale.stale and stale.committed == [] and stale.stale_drafts == 2
    assert book.committed == PROMPT + [10, 11, 99] and not book.in_flight


def test_a_fresh_verdict_for_a_doomed_block_is_a_protocol_error():
    book, _, second = two_blocks_first_rejected()
    with pytest.raises(ProtocolError):
        book.judge(verdict(second, 1, 7))


def test_a_draft_made_for_an_old_epoch_is_dropped():
    book = started()
    draft(book, 11)
    block = book.cut_block(0.0, False)
    old_epoch = book.epoch
    book.judge(verdict(block, accepted=0, next_token=50))  # rejects 11: reset
    assert not book.append(old_epoch, 12)
    assert book.tail == PROMPT + [10, 50]
    assert book.append(book.epoch, 51) and book.tail[-1] == 51


def test_a_wrong_guess_of_the_bonus_resets_even_when_every_draft_is_accepted():
    book = started()
    draft(book, 11)
    block = book.cut_block(0.0, False)
    draft(book, 12, 13)  # guess 12, draft 13
    judged = book.judge(verdict(block, accepted=1, next_token=77))
    assert judged.reset and book.tail == PROMPT + [10, 11, 77]


def test_the_overlap_with_committed_tokens_is_not_counted_as_drafts():
    """A block sent after a guess of a bonus token carries it; once the bonus is committed,
    the verdict's drafts start after it."""
    book = started()
    draft(book, 11)
    first = book.cut_block(0.0, False)
    draft(book, 12, 13)  # guess 12 (the bonus of `first`), draft 13
    second = book.cut_block(0.0, False)
    book.judge(verdict(first, 1, 12))  # the guess was right
    judged = book.judge(verdict(second, accepted=1, next_token=14))
    assert judged.drafts == [13] and judged.committed == [13, 14]
    assert book.committed == PROMPT + [10, 11, 12, 13, 14]


@pytest.mark.parametrize("bad", [
    dict(start_position=2),  # not the block in flight
    dict(stale=True),  # stale, though nothing invalidated the block
    dict(accepted_count=3),  # more than it drafted
])
def test_verdicts_that_do_not_fit_the_block_in_flight_are_protocol_errors(bad):
    book = started()
    draft(book, 11, 12)
    block = book.cut_block(0.0, False)
    fields = dict(start_position=block.start_position, accepted_count=1, next_token=5) | bad
    with pytest.raises(ProtocolError):
        book.judge(Verdict(**fields))


def test_a_verdict_with_nothing_in_flight_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        started().judge(Verdict(start_position=3, accepted_count=0, next_token=1))


def test_start_at_the_wrong_position_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        DraftTail(PROMPT).start(2, 10)


def test_a_resumed_session_starts_after_the_resumed_tokens():
    book = DraftTail(PROMPT + [10, 11])
    assert book.start(5, 12) == [12] and book.committed == PROMPT + [10, 11, 12]
    assert DraftTail(PROMPT).start(3, None) == []  # a session that finished at once


def test_sparse_distributions_travel_with_their_block_only():
    book = started()
    book.append(book.epoch, 11, "q11")
    book.append(book.epoch, 12, "q12")
    block = book.cut_block(0.0, with_dists=True)
    assert block.draft_dists == ["q11", "q12"] and book.dists == []
    book.append(book.epoch, 13, "q13")
    book.judge(verdict(block, 0, 40))  # reset drops the unsent distribution too
    assert book.dists == []


def test_stop_token_at_the_end_of_the_tail():
    book = started()
    assert not book.ends_in({10})  # committed tokens don't count
    draft(book, 2)
    assert book.ends_in({2})


def test_scripted_pipelined_exchange_keeps_counts_consistent():
    """A deterministic cloud three blocks deep, whose drafts go wrong every few tokens and
    which accepts less than it could per a script: every block gets exactly one verdict, the
    stale ones are exactly those in flight at a reset, every reset advances the epoch, and the
    committed tokens are the cloud's own, exactly those the verdicts committed."""
    truth = list(range(100, 200))  # what the cloud generates
    book = DraftTail(PROMPT)
    book.start(3, truth[0])
    script = iter([2, 0, 3, 1, 0, 2, 2, 0, 1, 3, 0, 0, 2, 1] * 4)
    committed_by_verdicts = [truth[0]]
    blocks = verdicts = stale = doomed_at_resets = resets = drafted = 0
    epoch = book.epoch
    while len(book.committed) - len(PROMPT) < 60:
        while len(book.in_flight) < 3:
            for _ in range(3 if book.next_is_guess() else 2):
                position = len(book.tail) - len(PROMPT)
                drafted += 1
                draft(book, truth[position] if drafted % 5 else -position)  # every 5th is wrong
            book.cut_block(0.0, False)
            blocks += 1
        sent = book.in_flight[0]
        if sent.doomed:
            judged = book.judge(verdict(sent.block, 0, None, stale=True))
            assert judged.stale and judged.committed == []
            stale += 1
        else:
            generated = len(book.committed) - len(PROMPT)
            drafts = sent.block.token_ids[len(book.committed) - sent.block.start_position:]
            right = next((i for i, t in enumerate(drafts) if t != truth[generated + i]), len(drafts))
            accepted = min(right, next(script))
            judged = book.judge(verdict(sent.block, accepted, truth[generated + accepted]))
            assert judged.drafts == drafts and judged.accepted == drafts[:accepted]
            committed_by_verdicts += judged.committed
            if judged.reset:
                resets += 1
                doomed_at_resets += len(book.in_flight)
                assert all(f.doomed for f in book.in_flight) and book.tail == book.committed
            else:
                assert book.tail[: len(book.committed)] == book.committed
        verdicts += 1
        assert book.committed == PROMPT + truth[: len(book.committed) - len(PROMPT)]
        assert book.epoch == epoch + resets
    assert blocks == verdicts + len(book.in_flight)
    assert stale + sum(f.doomed for f in book.in_flight) == doomed_at_resets
    assert resets > 0 and stale > 0  # the script exercised both
    assert book.committed == PROMPT + committed_by_verdicts


def test_a_long_tail_is_cut_into_blocks_of_at_most_max_drafts():
    """Provisional tokens (edge/offline.py) fill the tail at once; they go out in bounded blocks,
    each later one carrying the guess of the bonus token the block before brings."""
    book = started()
    draft(book, *range(20, 30))
    first = book.cut_block(0.0, with_dists=False, max_drafts=4)
    assert first.start_position == 3 and first.token_ids == [10, 20, 21, 22, 23]
    second = book.cut_block(0.0, with_dists=False, max_drafts=4)
    assert second.start_position == 7 and second.token_ids == [23, 24, 25, 26, 27, 28]  # anchor, guess, 4 drafts
    assert book.pending_drafts() == 0 and book.tail[book.sent_upto:] == [29]
    book.judge(verdict(first, 4, 24))  # every draft and the guess right
    judged = book.judge(verdict(second, 4, 29))
    assert judged.accepted == [25, 26, 27, 28] and not judged.reset
    assert book.committed == [*PROMPT, 10, *range(20, 30)]
