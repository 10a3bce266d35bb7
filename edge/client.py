"""The edge's gRPC connection to the cloud: channel, calls, and byte accounting.

The boundary of the edge: the only module that builds or reads protobuf messages and sees
gRPC errors. Everything above it (edge/speculative.py, edge/engine.py) speaks common.wire
dataclasses and common.errors exceptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from common import errors
from common.channel import ChannelSecurity, Keepalive, open_channel
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from common.wire import (
    CloudDecode, DecodedToken, DecodeHint, DraftBlock, GenerateRequest, GenerateStep, ModelInfo, Progress, SessionOpen,
    SessionStarted, TokenizerChunk, Verdict,
)

_ERRORS = {cls.code: cls for cls in (
    errors.InvalidArgument, errors.FailedPrecondition, errors.ResourceExhausted, errors.Unauthenticated,
)}
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                grpc.StatusCode.UNKNOWN}

# A server that drops the connection during setup is often a TLS server reached in plaintext,
# or a mutual-TLS server reached without a client certificate.
_HANDSHAKE_HINT = (" (does the cloud serve TLS? then pass --cloud-ca or --tls; mutual TLS also needs "
                   "--client-cert and --client-key)")


class NoConnection(errors.CloudUnavailable):
    """The channel found no replica to connect to within the connect timeout (retrying won't help soon)."""


class ReplicaDraining(errors.CloudUnavailable):
    """The replica sent a drain notice: the answer moves to another replica."""

    @classmethod
    def of(cls, notice: pb.DrainNotice) -> ReplicaDraining:
        return cls(f"replica {notice.replica or '(unnamed)'} is draining: {notice.reason or 'shutting down'}")


def error_from_rpc(exc: grpc.aio.AioRpcError) -> errors.TandemError:
    """The domain exception for a failed call, keeping the server's message (and a refusal's retry hint)."""
    error = error_from_status(exc.code(), exc.details())
    if isinstance(error, errors.ResourceExhausted):
        error.retry_after_s = retry_pushback_s(exc)
    return error


def retry_pushback_s(exc: grpc.RpcError) -> float | None:
    """The server's hint when to retry (trailing metadata grpc-retry-pushback-ms, gRFC A6), in seconds."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-retry-pushback-ms" and str(value).isdigit():
            return int(value) / 1000
    return None


# grpc.aio reports a stream that broke under a pending write as INTERNAL with this text,
# instead of the transport's UNAVAILABLE (grpc/grpc#36066). Our server never sends it: its
# internal errors read "internal error: <type>" (cloud/errors.py).
_CORE_TRANSPORT_FAILURE = "Internal error from Core"


def error_from_status(code: grpc.StatusCode, details: str | None) -> errors.TandemError:
    if code in _UNREACHABLE or (code == grpc.StatusCode.INTERNAL and details == _CORE_TRANSPORT_FAILURE):
        return errors.CloudUnavailable(f"cloud unavailable ({code.name}): {details}")
    cls = _ERRORS.get(code.name, errors.TandemError)
    return cls(details or code.name)


class SpeculateStream:
    """A Speculate call in dataclasses: open() a session, send() draft blocks, read() its answers.

    Counts the serialized bytes of every message each way. The call starts on first use, once
    the channel is connected (see CloudClient.ready), so that a stream opened while the cloud
    restarts waits for it instead of failing at once. Every failure surfaces as a
    common.errors exception.
    """

    def __init__(self, start_call, response_timeout_s: float | None = None):
        self._start_call = start_call  # async () -> the grpc call
        self._starting: asyncio.Future | None = None
        self.response_timeout_s = response_timeout_s
        self.bytes_sent = 0
        self.bytes_received = 0
        self._writing = asyncio.Lock()  # the draft's guesses go out from their own task

    async def _call(self):
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start_call())
        return await asyncio.shield(self._starting)  # shared by the writer and the reader

    async def open(self, session: SessionOpen) -> None:
        await self._write(pb.SpeculateRequest(open=session.to_pb()))

    async def send(self, block: DraftBlock) -> None:
        await self._write(pb.SpeculateRequest(draft=block.to_pb()))

    async def send_decode(self, request: CloudDecode) -> None:
        """Asks the cloud to decode alone (issue 19: when drafting does not pay)."""
        await self._write(pb.SpeculateRequest(decode=request.to_pb()))

    async def send_hint(self, hint: DecodeHint) -> None:
        """The draft's guesses of what the cloud decodes next (never answered)."""
        await self._write(pb.SpeculateRequest(hint=hint.to_pb()))

    async def _write(self, request: pb.SpeculateRequest) -> None:
        call = await self._call()
        self.bytes_sent += request.ByteSize()
        # grpc.aio cancels the whole call when a task is cancelled inside call.write(). A writer
        # that gives up (a guess no longer wanted as the answer ends) must not end the session,
        # so the write itself is shielded and finishes on its own; only cancel() ends the call.
        write = asyncio.ensure_future(self._write_in_turn(call, request))
        write.add_done_callback(_retrieve)
        try:
            await asyncio.shield(write)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        except asyncio.InvalidStateError:  # the call had already ended: report how
            raise error_from_status(await call.code(), await call.details()) from None

    async def _write_in_turn(self, call, request: pb.SpeculateRequest) -> None:
        async with self._writing:
            await call.write(request)

    async def read(self) -> SessionStarted | Verdict | DecodedToken | Progress | None:
        """The next answer, or None when the cloud ended the stream."""
        call = await self._call()
        try:
            response = await _bounded(call.read(), self.response_timeout_s, call)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        if response is grpc.aio.EOF:
            return None
        self.bytes_received += response.ByteSize()
        kind = response.WhichOneof("kind")
        if kind == "drain":
            raise ReplicaDraining.of(response.drain)
        if kind not in _SPECULATE_ANSWERS:
            raise errors.ProtocolError(f"the cloud sent a Speculate answer of unknown kind {kind!r}")
        return _SPECULATE_ANSWERS[kind](getattr(response, kind))

    async def done_writing(self) -> None:
        call = await self._call()
        try:
            async with self._writing:  # after any write still going out
                await call.done_writing()
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        except asyncio.InvalidStateError:
            pass  # the call already ended; read() reports how

    def cancel(self) -> None:
        if self._starting is None:
            return
        if self._starting.done() and not self._starting.cancelled() and self._starting.exception() is None:
            self._starting.result().cancel()
        else:
            self._starting.cancel()


def _retrieve(write: asyncio.Future) -> None:
    """Marks a shielded write's outcome as seen: its writer may have stopped waiting for it."""
    if not write.cancelled():
        write.exception()


_SPECULATE_ANSWERS = {"started": SessionStarted.from_pb, "verdict": Verdict.from_pb, "progress": Progress.from_pb,
                      "decoded": DecodedToken.from_pb}


class GenerateStream:
    """A Generate call (the cloud-only baseline) in dataclasses, counting bytes each way."""

    def __init__(self, client: CloudClient, request: GenerateRequest, connect_timeout_s: float | None = None):
        self._client = client
        self._connect_timeout_s = connect_timeout_s
        self._message = request.to_pb()
        self.bytes_sent = self._message.ByteSize()
        self.bytes_received = 0

    async def __aiter__(self) -> AsyncIterator[GenerateStep]:
        client = self._client
        await client.ready(self._connect_timeout_s)
        call = client.stub.Generate(self._message, metadata=client.metadata)
        try:
            while (response := await _bounded(call.read(), client.response_timeout_s, call)) is not grpc.aio.EOF:
                self.bytes_received += response.ByteSize()
                if response.HasField("drain"):
                    raise ReplicaDraining.of(response.drain)
                yield GenerateStep.from_pb(response)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()  # the consumer stopped early: let the cloud free the session now


async def _bounded(read, timeout_s: float | None, call):
    """Awaits one message; a cloud silent for timeout_s (alive to keepalive, but hung) is unavailable."""
    try:
        async with asyncio.timeout(timeout_s):
            return await read
    except TimeoutError:
        call.cancel()
        raise errors.CloudUnavailable(f"cloud unavailable: no answer for {timeout_s:g} s") from None


class CloudClient:
    """Calls to the cloud. Streams get no overall deadline (answers may be long): keepalive
    notices a dead link, and response_timeout_s a cloud that stopped answering."""

    def __init__(self, address: str, *, channel: grpc.aio.Channel | None = None,
                 connect_timeout_s: float = 10.0, security: ChannelSecurity = ChannelSecurity(),
                 keepalive: Keepalive = Keepalive(), response_timeout_s: float | None = 120.0):
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.response_timeout_s = response_timeout_s
        self.channel = channel or open_channel(address, security, keepalive)
        self.metadata = security.metadata()
        self.stub = pb_grpc.TandemStub(self.channel)

    async def info(self, timeout_s: float | None = None) -> ModelInfo:
        """The cloud's model info; waits up to timeout_s (default connect_timeout_s) for the cloud."""
        timeout_s = timeout_s or self.connect_timeout_s
        try:
            response = await self.stub.Info(pb.InfoRequest(), metadata=self.metadata,
                                            timeout=timeout_s, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise error_from_rpc(exc) from None
            raise await self._unreachable(timeout_s) from None
        return ModelInfo.from_pb(response)

    async def ready(self, timeout_s: float | None = None) -> None:
        """Waits up to timeout_s (default connect_timeout_s) for a connection (after a cloud restart, a reconnect)."""
        if self.channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return
        timeout_s = timeout_s or self.connect_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await self.channel.channel_ready()
        except TimeoutError:
            raise await self._unreachable(timeout_s) from None

    async def _unreachable(self, timeout_s: float | None = None) -> NoConnection:
        """Why connecting failed (refused, TLS handshake, ...): waiting hides it, a call that fails fast tells."""
        timeout_s = timeout_s or self.connect_timeout_s
        details = "no connection"
        try:
            await self.stub.Info(pb.InfoRequest(), metadata=self.metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as fast:
            details = fast.details() or fast.code().name
        hint = _HANDSHAKE_HINT if "Socket closed" in details else ""
        return NoConnection(f"cannot reach the cloud at {self.address} within {timeout_s:g} s: {details}{hint}")

    def speculate(self, connect_timeout_s: float | None = None) -> SpeculateStream:
        """A Speculate call; connect_timeout_s bounds the wait for a connection (default: the client's)."""
        async def start():
            await self.ready(connect_timeout_s)
            return self.stub.Speculate(metadata=self.metadata)

        return SpeculateStream(start, self.response_timeout_s)

    async def tokenizer_chunks(self, max_chunk_bytes: int = 0) -> AsyncIterator[TokenizerChunk]:
        """The target's tokenizer files in chunks (GetTokenizer), zlib accepted. A cloud too old to
        serve them is FailedPrecondition."""
        await self.ready()
        call = self.stub.GetTokenizer(pb.TokenizerRequest(max_chunk_bytes=max_chunk_bytes, accept_zlib=True),
                                      metadata=self.metadata)
        try:
            while (response := await _bounded(call.read(), self.response_timeout_s, call)) is not grpc.aio.EOF:
                yield TokenizerChunk.from_pb(response)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise errors.FailedPrecondition(f"the cloud at {self.address} cannot send its tokenizer (a version "
                                                "before GetTokenizer)") from None
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()

    def generate(self, request: GenerateRequest, connect_timeout_s: float | None = None) -> GenerateStream:
        """`async for step in client.generate(request)`; the stream counts the bytes."""
        return GenerateStream(self, request, connect_timeout_s)

    async def close(self) -> None:
        await self.channel.close()
