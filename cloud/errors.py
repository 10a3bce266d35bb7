"""The one place where exceptions become gRPC statuses."""

from __future__ import annotations

import asyncio
import inspect
import logging

import grpc
from google.protobuf.message import DecodeError

from cloud.handler_wrapping import same_kind
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


RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"  # gRFC A6: a server's hint when to retry


async def _abort(context, exc: Exception):
    if isinstance(exc, TandemError):
        retry_after_s = getattr(exc, "retry_after_s", None)
        if retry_after_s is not None:
            context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(round(retry_after_s * 1000))),))
        await context.abort(grpc.StatusCode[exc.code], str(exc))
    log.exception("internal error")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


class _Outcome:
    """Tracks one call's status code and reports it when the call ends."""

    def __init__(self, context, report):
        self.context, self.report, self.code = context, report, "OK"

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self.code = "CANCELLED"
        elif isinstance(exc, grpc.aio.AbortError):
            code = self.context.code()
            self.code = code.name if isinstance(code, grpc.StatusCode) else self.code
        else:
            self.code = exc.code if isinstance(exc, TandemError) else "INTERNAL"

    def done(self) -> None:
        if self.report is not None:
            self.report(self.code)


def _wrap_coroutine(behavior, report):
    """Unary responses, or streams written with context.write()."""

    async def wrapper(request_or_iterator, context):
        outcome = _Outcome(context, report)
        try:
            return await behavior(decoded(request_or_iterator), context)
        except (asyncio.CancelledError, grpc.aio.AbortError) as exc:
            outcome.failed(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            outcome.failed(exc)
            await _abort(context, exc)
        finally:
            outcome.done()

    return wrapper


def _wrap_generator(behavior, report):
    async def wrapper(request_or_iterator, context):
        outcome = _Outcome(context, report)
        try:
            async for response in behavior(decoded(request_or_iterator), context):
                yield response
        except (asyncio.CancelledError, grpc.aio.AbortError) as exc:
            outcome.failed(exc)
            raise
        except Exception as exc:  # noqa: BLE001
            outcome.failed(exc)
            await _abort(context, exc)
        finally:
            outcome.done()

    return wrapper


def _wrap(behavior, report=None):
    wrap = _wrap_generator if inspect.isasyncgenfunction(behavior) else _wrap_coroutine
    return wrap(behavior, report)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps common.errors exceptions to their status; anything else to INTERNAL (logged).

    Requests that do not parse become INVALID_ARGUMENT rather than grpc's UNKNOWN. Only the
    methods under `prefix` are wrapped: health and reflection handle their own.
    `on_finished(method, code)` (optional) hears how every call ended (the rpc metrics).
    """

    def __init__(self, prefix: str = "/tandem.v1.", on_finished=None):
        self.prefix = prefix
        self.on_finished = on_finished

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefix):
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        report = (lambda code: self.on_finished(method, code)) if self.on_finished else None
        return same_kind(handler, lambda behavior: _wrap(behavior, report), _tolerant(handler.request_deserializer))
