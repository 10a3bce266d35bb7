"""One call's messages: read and written under the idle timeout, reads cut short by a drain.

A session holds a KV cache, so a stream must not be able to hold it forever by going quiet:
neither by never sending its next message nor by never reading the cloud's answers (once
HTTP/2 flow control fills up, a write waits for the reader). Both waits are bounded; past the
bound the call fails with DEADLINE_EXCEEDED and the session is freed. Keepalive (server.py)
covers the other case, a peer that vanished without closing its connection.

When the replica drains, a Speculate stream waiting for its next draft block must not wait for
it: `next_or_drain` returns DRAIN at once, so the service can tell the edge to move.
"""

from __future__ import annotations

import asyncio

import grpc

from cloud.errors import decoded
from common.errors import DeadlineExceeded

DRAIN = object()  # what next_or_drain returns once the replica drains


class CallStream:
    def __init__(self, context: grpc.aio.ServicerContext, idle_timeout_s: float,
                 draining: asyncio.Event | None = None):
        self.context = context
        self.idle_timeout_s = idle_timeout_s or None  # 0: wait forever
        self.draining = draining or asyncio.Event()  # set when the replica drains

    async def read(self):
        """The next request, or None once the client has half-closed."""
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                request = await self.context.read()
        except TimeoutError:
            raise self._idle("sent no message") from None
        return None if request is grpc.aio.EOF else decoded(request)

    async def next_or_drain(self):
        """The next request (None once the client half-closed), or DRAIN as soon as the replica drains."""
        if self.draining.is_set():
            return DRAIN
        read = asyncio.ensure_future(self.read())
        drain = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait((read, drain), return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
            if not read.done():
                read.cancel()
        return read.result() if read.done() and not read.cancelled() else DRAIN

    async def write(self, response) -> None:
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                await self.context.write(response)
        except TimeoutError:
            raise self._idle("accepted no message") from None

    def _idle(self, what: str) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the client {what} for {self.idle_timeout_s:g} s (the server's idle timeout); the session was freed"
        )
