"""The edge's gRPC connection to the cloud: channel, calls, and byte accounting."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from common import errors
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from common.types import ModelInfo

_ERRORS = {cls.code: cls for cls in (
    errors.InvalidArgument, errors.FailedPrecondition, errors.ResourceExhausted, errors.Unauthenticated,
)}
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                grpc.StatusCode.UNKNOWN}


def error_from_rpc(exc: grpc.aio.AioRpcError) -> errors.TandemError:
    """The domain exception for a failed call, keeping the server's message."""
    code = exc.code()
    if code in _UNREACHABLE:
        return errors.CloudUnavailable(f"cloud unavailable ({code.name}): {exc.details()}")
    cls = _ERRORS.get(code.name, errors.TandemError)
    return cls(exc.details() or code.name)


class CountedStream:
    """A Speculate call that counts the serialized bytes of every message each way."""

    def __init__(self, call):
        self._call = call
        self.bytes_sent = 0
        self.bytes_received = 0

    async def write(self, request: pb.SpeculateRequest) -> None:
        self.bytes_sent += request.ByteSize()
        await self._call.write(request)

    async def read(self) -> pb.SpeculateResponse | None:
        """The next response, or None when the cloud ended the stream."""
        response = await self._call.read()
        if response is grpc.aio.EOF:
            return None
        self.bytes_received += response.ByteSize()
        return response

    async def done_writing(self) -> None:
        await self._call.done_writing()

    def cancel(self) -> None:
        self._call.cancel()


class CloudClient:
    def __init__(self, address: str, *, channel: grpc.aio.Channel | None = None,
                 connect_timeout_s: float = 10.0):
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.channel = channel or grpc.aio.insecure_channel(address, options=[
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.http2.bdp_probe", 0),  # see cloud/server.py: pings cost more than they tune
        ])
        self.stub = pb_grpc.TandemStub(self.channel)

    async def info(self) -> ModelInfo:
        try:
            response = await self.stub.Info(pb.InfoRequest(), timeout=self.connect_timeout_s, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        return ModelInfo.from_pb(response)

    def speculate(self) -> CountedStream:
        return CountedStream(self.stub.Speculate())

    async def generate(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse]:
        try:
            async for response in self.stub.Generate(request):
                yield response
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None

    async def close(self) -> None:
        await self.channel.close()
