"""Interceptors' one switch over gRPC's four handler kinds (unary/streaming request × response)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def same_kind(handler: grpc.RpcMethodHandler, wrap: Callable, request_deserializer) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind whose behaviour is wrap(handler's behaviour)."""
    for kind, factory in _FACTORIES.items():
        behavior = getattr(handler, kind)
        if behavior is not None:
            return factory(wrap(behavior), request_deserializer=request_deserializer,
                           response_serializer=handler.response_serializer)
    return handler
