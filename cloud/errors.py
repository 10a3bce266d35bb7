"""The one place where exceptions become gRPC statuses."""

from __future__ import annotations

import asyncio
import inspect
import logging

import grpc
from google.protobuf.message import DecodeError

from cloud.handlers import same_kind
from common.errors import InvalidArgument, TandemError

log = logging.getLogger(__name__)


class Undecodable:
    """Stands in for a request whose bytes are not a valid message of its type.

    grpc would turn the parser's exception into UNKNOWN with the exception's repr; the handler
    raises InvalidArgument instead (see `decoded`).
    """

    def __init__(self, error: DecodeError, type_name: str):
        self.message = f"the request is not a valid {type_name}: {error}"


def decoded(request):
    """`request`, or InvalidArgument when it could not be parsed."""
    if isinstance(request, Undecodable):
        raise InvalidArgument(request.message)
    return request


def _tolerant(deserializer):
    if deserializer is None:
        return None
    type_name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = type_name.full_name if type_name is not None else "request"

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as exc:
            return Undecodable(exc, type_name)

    return deserialize


async def _abort(context, exc: Exception):
    if isinstance(exc, TandemError):
        await context.abort(grpc.StatusCode[exc.code], str(exc))
    log.exception("internal error")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


def _wrap_coroutine(behavior):
    """Unary responses, or streams written with context.write()."""

    async def wrapper(request_or_iterator, context):
        try:
            return await behavior(decoded(request_or_iterator), context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            await _abort(context, exc)

    return wrapper


def _wrap_generator(behavior):
    async def wrapper(request_or_iterator, context):
        try:
            async for response in behavior(decoded(request_or_iterator), context):
                yield response
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc)

    return wrapper


def _wrap(behavior):
    return _wrap_generator(behavior) if inspect.isasyncgenfunction(behavior) else _wrap_coroutine(behavior)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps common.errors exceptions to their status; anything else to INTERNAL (logged).

    Requests that do not parse become INVALID_ARGUMENT rather than grpc's UNKNOWN. Only the
    methods under `prefix` are wrapped: health and reflection handle their own.
    """

    def __init__(self, prefix: str = "/tandem.v1."):
        self.prefix = prefix

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefix):
            return handler
        return same_kind(handler, _wrap, _tolerant(handler.request_deserializer))
