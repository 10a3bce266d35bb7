"""The cloud decoding alone inside a Speculate session (CloudDecode): the edge asks for it while
drafting does not pay (edge/drafting_pays.py), and sends the next request ahead, so the
scheduler chains them on its Generate job kind without a gap.
"""

from __future__ import annotations

import asyncio
from collections import deque

from cloud.call_stream import DRAIN, CallStream
from cloud.scheduler import Scheduler
from cloud.session import VerifierSession
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.wire import CloudDecode, DecodeHint, DecodedToken


async def decode_alone(scheduler: Scheduler, session: VerifierSession, stream: CallStream,
                       first: CloudDecode) -> asyncio.Future:
    """Streams the tokens the cloud decodes alone for `first`, and for every CloudDecode that
    arrives meanwhile.

    Returns the read of the next request (a future: a read is never cancelled, so no message is
    lost), which may already hold the first other request that came meanwhile (a draft block,
    None at the half-close, DRAIN); the caller handles it once every CloudDecode is answered.
    """
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue = asyncio.Queue()
    emit = lambda item: loop.call_soon_threadsafe(answers.put_nowait, item)  # noqa: E731
    open_requests = deque([first])
    scheduler.decode(session, first, emit)
    read = asyncio.ensure_future(stream.next_or_drain())
    answer = asyncio.ensure_future(answers.get())
    other = False  # `read` holds a request that is not a CloudDecode
    try:
        while open_requests:
            waiting = {answer} if other else {answer, read}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if read in done and not other:
                request = read.result()
                if request not in (None, DRAIN) and request.WhichOneof("kind") == "decode":
                    open_requests.append(CloudDecode.from_pb(request.decode))
                    scheduler.decode(session, open_requests[-1], emit)
                    read = asyncio.ensure_future(stream.next_or_drain())
                elif request not in (None, DRAIN) and request.WhichOneof("kind") == "hint":
                    take_hint(scheduler, session, request.hint)
                    read = asyncio.ensure_future(stream.next_or_drain())
                else:
                    other = True
            if answer in done:
                token = answer.result()
                answer = asyncio.ensure_future(answers.get())
                if isinstance(token, BaseException):
                    raise token
                last = token.stale or token.retires > 0  # with guesses, one step may complete several requests
                for _ in range(1 if token.stale else token.retires):
                    open_requests.popleft()
                await stream.write(pb.SpeculateResponse(decoded=DecodedToken(
                    token.position, token.token_id, token.finish_reason, token.stale,
                    forward_passes=session.forward_passes if last else 0,
                    decode_step_us=token.decode_step_us if last else 0, hinted_ids=token.hinted,
                    logprob=token.logprob).to_pb()))
        return read
    except BaseException:
        read.cancel()
        raise
    finally:
        answer.cancel()


def take_hint(scheduler: Scheduler, session: VerifierSession, message: pb.DecodeHint) -> None:
    """Hands the scheduler the edge's guesses (DecodeHint), checked here; a server that takes none
    (Limits.max_hint_tokens 0) ignores them."""
    hint = DecodeHint.from_pb(message)
    session.check_ids(hint.token_ids, "hint token_ids")
    if session.limits.max_hint_tokens:
        scheduler.hint(session, hint)

