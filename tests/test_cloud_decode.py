"""The edge's CloudDecode bookkeeping (edge/cloud_decode.py): pure, no model, no stream, no clock."""

from __future__ import annotations

import pytest

from common.errors import ProtocolError
from common.wire import DecodedToken, FinishReason
from edge.cloud_decode import AHEAD_S, MAX_REQUEST_TOKENS, MIN_REQUEST_TOKENS, DecodeRequests, request_tokens


def test_requests_chain_positions_ahead_of_answers():
    book = DecodeRequests()
    first = book.next_request(committed=10, tokens=4)
    second = book.next_request(committed=10, tokens=4)
    assert (first.start_position, second.start_position) == (10, 14)
    committed = 10
    for position in range(10, 18):
        new = book.answer(DecodedToken(position, 100 + position), committed)
        assert new == [100 + position]
        committed += 1
        assert len(book.in_flight) == (2 if position < 13 else 1 if position < 17 else 0)


def test_a_finish_ends_the_request_and_later_ones_come_back_stale():
    book = DecodeRequests()
    book.next_request(5, 4)
    book.next_request(5, 4)
    assert book.answer(DecodedToken(5, 7), 5) == [7]
    assert book.answer(DecodedToken(6, 2, FinishReason.STOP), 6) == [2]
    assert len(book.in_flight) == 1
    assert book.answer(DecodedToken(9, None, FinishReason.STOP, stale=True), 7) == []
    assert not book.in_flight


@pytest.mark.parametrize("token", [DecodedToken(6, 1), DecodedToken(4, 1), DecodedToken(7, None, stale=True)])
def test_answers_out_of_place_are_protocol_errors(token):
    book = DecodeRequests()
    book.next_request(5, 2)
    with pytest.raises(ProtocolError):
        book.answer(token, 5)


def test_no_request_in_flight_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        DecodeRequests().answer(DecodedToken(0, 1), 0)


def test_request_size_covers_the_round_trip():
    assert request_tokens(link_s=0.1, cloud_step_s=0.06, remaining=1000) * 0.06 >= 2 * 0.1
    assert request_tokens(link_s=0.001, cloud_step_s=0.06, remaining=1000) * 0.06 >= AHEAD_S
    assert request_tokens(link_s=0.001, cloud_step_s=1.0, remaining=1000) == MIN_REQUEST_TOKENS
    assert request_tokens(link_s=1.0, cloud_step_s=0.001, remaining=1000) == MAX_REQUEST_TOKENS
    assert request_tokens(link_s=0.1, cloud_step_s=0.06, remaining=2) == 2
    assert request_tokens(link_s=0.1, cloud_step_s=0.0, remaining=1000) == MIN_REQUEST_TOKENS
