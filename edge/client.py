"""The edge's gRPC connection to the cloud: channel, calls, and byte accounting."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import grpc

from common import errors
from common.channel import ChannelSecurity, Keepalive, open_channel
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from common.types import ModelInfo

_ERRORS = {cls.code: cls for cls in (
    errors.InvalidArgument, errors.FailedPrecondition, errors.ResourceExhausted, errors.Unauthenticated,
)}
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                grpc.StatusCode.UNKNOWN}

# A server that drops the connection during setup is often a TLS server reached in plaintext,
# or a mutual-TLS server reached without a client certificate.
_HANDSHAKE_HINT = (" (does the cloud serve TLS? then pass --cloud-ca or --tls; mutual TLS also needs "
                   "--client-cert and --client-key)")


def error_from_rpc(exc: grpc.aio.AioRpcError) -> errors.TandemError:
    """The domain exception for a failed call, keeping the server's message."""
    code = exc.code()
    if code in _UNREACHABLE:
        return errors.CloudUnavailable(f"cloud unavailable ({code.name}): {exc.details()}")
    cls = _ERRORS.get(code.name, errors.TandemError)
    return cls(exc.details() or code.name)


class CountedStream:
    """A Speculate call that counts the serialized bytes of every message each way."""

    def __init__(self, call, response_timeout_s: float | None = None):
        self._call = call
        self.response_timeout_s = response_timeout_s
        self.bytes_sent = 0
        self.bytes_received = 0

    async def write(self, request: pb.SpeculateRequest) -> None:
        self.bytes_sent += request.ByteSize()
        await self._call.write(request)

    async def read(self) -> pb.SpeculateResponse | None:
        """The next response, or None when the cloud ended the stream."""
        response = await _bounded(self._call.read(), self.response_timeout_s, self._call)
        if response is grpc.aio.EOF:
            return None
        self.bytes_received += response.ByteSize()
        return response

    async def done_writing(self) -> None:
        await self._call.done_writing()

    def cancel(self) -> None:
        self._call.cancel()


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

    async def info(self) -> ModelInfo:
        """The cloud's model info; waits up to connect_timeout_s for the cloud to be reachable."""
        call = functools.partial(self.stub.Info, pb.InfoRequest(), metadata=self.metadata)
        try:
            response = await call(timeout=self.connect_timeout_s, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise error_from_rpc(exc) from None
            # Waiting hides why connecting failed (refused, TLS handshake, ...); one call that
            # fails fast reports the channel's last connection error.
            try:
                response = await call(timeout=self.connect_timeout_s)
            except grpc.aio.AioRpcError as fast:
                hint = _HANDSHAKE_HINT if "Socket closed" in (fast.details() or "") else ""
                raise errors.CloudUnavailable(
                    f"cannot reach the cloud at {self.address} within {self.connect_timeout_s:g} s: "
                    f"{fast.details()}{hint}"
                ) from None
        return ModelInfo.from_pb(response)

    def speculate(self) -> CountedStream:
        return CountedStream(self.stub.Speculate(metadata=self.metadata), self.response_timeout_s)

    async def generate(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse]:
        call = self.stub.Generate(request, metadata=self.metadata)
        try:
            while (response := await _bounded(call.read(), self.response_timeout_s, call)) is not grpc.aio.EOF:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()  # the consumer stopped early: let the cloud free the session now

    async def close(self) -> None:
        await self.channel.close()
