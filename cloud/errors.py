"""The one place where exceptions become gRPC statuses."""

from __future__ import annotations

import asyncio
import logging

import grpc

from common.errors import TandemError

log = logging.getLogger(__name__)


async def _abort(context, exc: Exception):
    if isinstance(exc, TandemError):
        await context.abort(grpc.StatusCode[exc.code], str(exc))
    log.exception("internal error")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


def _wrap_unary(behavior):
    async def wrapper(request, context):
        try:
            return await behavior(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            await _abort(context, exc)

    return wrapper


def _wrap_stream(behavior):
    async def wrapper(request_or_iterator, context):
        try:
            async for response in behavior(request_or_iterator, context):
                yield response
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc)

    return wrapper


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps common.errors exceptions to their status; anything else to INTERNAL (logged).

    Only the methods under `prefix` are wrapped: health and reflection handle their own.
    """

    def __init__(self, prefix: str = "/tandem.v1."):
        self.prefix = prefix

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefix):
            return handler
        kwargs = dict(request_deserializer=handler.request_deserializer,
                      response_serializer=handler.response_serializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream), **kwargs)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(_wrap_stream(handler.stream_stream), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary), **kwargs)
        return handler
