"""How the edge names a failed call: what fallback and callers key on."""

from __future__ import annotations

import grpc
import pytest

from common import errors
from edge.client import error_from_status


@pytest.mark.parametrize("code,details,expected", [
    (grpc.StatusCode.UNAVAILABLE, "Connection reset by peer", errors.CloudUnavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", errors.CloudUnavailable),
    # grpc.aio's report of a stream that broke under a pending write (grpc/grpc#36066)
    (grpc.StatusCode.INTERNAL, "Internal error from Core", errors.CloudUnavailable),
    (grpc.StatusCode.INTERNAL, "internal error: ValueError", errors.TandemError),
    (grpc.StatusCode.INVALID_ARGUMENT, "prompt_token_ids is empty", errors.InvalidArgument),
    (grpc.StatusCode.FAILED_PRECONDITION, "tokenizer mismatch", errors.FailedPrecondition),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "at its limit", errors.ResourceExhausted),
    (grpc.StatusCode.UNAUTHENTICATED, "missing token", errors.Unauthenticated),
])
def test_status_maps_to_the_domain_error(code, details, expected):
    error = error_from_status(code, details)
    assert type(error) is expected
    assert details in str(error)
