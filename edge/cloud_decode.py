"""The cloud decoding on its own within a hybrid session: the edge's CloudDecode requests in flight.

When drafting does not pay (edge/drafting_pays.py), the edge asks the cloud to decode alone in
requests of a few tokens each. Those tokens are never rejected, so every request's positions are
known when it is sent: the next request starts where the last one in flight ends, and is sent
before the tokens of the earlier ones arrive. The cloud then chains them without waiting a round
trip, and the stream runs at the cloud's own speed.

Pure bookkeeping (no model, no stream, no clock): tests/test_cloud_decode.py.
"""

from __future__ import annotations

import math
from collections import deque

from common.errors import ProtocolError
from common.wire import CloudDecode, DecodedToken

REQUESTS_IN_FLIGHT = 2  # while one request's tokens stream, the next is already at the cloud
MIN_REQUEST_TOKENS = 4
MAX_REQUEST_TOKENS = 64
# The next request is queued at the cloud this long (at least) before the current one ends, so an
# edge that is slow to send (a busy core) does not make the cloud wait either.
AHEAD_S = 0.5


def request_tokens(link_s: float, cloud_step_s: float, remaining: int) -> int:
    """Tokens per request so that the cloud never waits for the next one.

    The request after next leaves as the last token of one arrives, and reaches the cloud a link
    round trip later, while the cloud decodes the request in between: a request must last longer
    than the round trip (twice, for margin) and than AHEAD_S. Fewer when the answer has fewer
    tokens left.
    """
    if cloud_step_s <= 0:
        wanted = MIN_REQUEST_TOKENS
    else:
        ahead = max(2 * link_s, AHEAD_S)
        wanted = min(MAX_REQUEST_TOKENS, max(MIN_REQUEST_TOKENS, math.ceil(ahead / cloud_step_s) + 1))
    return max(1, min(wanted, remaining))


class DecodeRequests:
    def __init__(self):
        self.in_flight: deque[CloudDecode] = deque()

    def next_request(self, committed: int, tokens: int) -> CloudDecode:
        """The next request (now in flight): it starts where the last in flight ends, or at the
        committed length when none is."""
        start = self.in_flight[-1].end_position if self.in_flight else committed
        request = CloudDecode(start_position=start, max_tokens=tokens)
        self.in_flight.append(request)
        return request

    def answer(self, token: DecodedToken, committed: int) -> list[int]:
        """Applies one DecodedToken (the answers come in request order); returns the ids it
        commits ([] for a stale answer). `committed` is the session's committed length."""
        if not self.in_flight:
            raise ProtocolError("a decoded token arrived for no decode request in flight")
        head = self.in_flight[0]
        if token.stale:
            if token.position != head.start_position:
                raise ProtocolError(f"stale answer at {token.position} for the request at {head.start_position}")
            self.in_flight.popleft()
            return []
        first = token.first_position  # before its hinted tokens (DecodeHint), if any
        if first != committed or not head.start_position <= first < head.end_position:
            raise ProtocolError(f"decoded tokens from position {first}; expected {committed} within the "
                                f"request [{head.start_position}, {head.end_position})")
        ids = token.ids
        if first + len(ids) > self.in_flight[-1].end_position:
            raise ProtocolError(f"decoded tokens up to position {first + len(ids) - 1}, beyond the requests")
        while self.in_flight and self.in_flight[0].retired(first + len(ids), bool(token.finish_reason)):
            self.in_flight.popleft()  # with guesses, one answer may complete several requests
        return ids
