"""Domain errors, each naming the gRPC status it becomes.

Domain code raises these without importing grpc; one interceptor on the server turns them
into statuses (cloud/errors.py), and the client turns statuses back into exceptions.
"""

from __future__ import annotations


class TandemError(Exception):
    """Base class; `code` is the name of a grpc.StatusCode member."""

    code = "INTERNAL"


class InvalidArgument(TandemError):
    code = "INVALID_ARGUMENT"


class FailedPrecondition(TandemError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(TandemError):
    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(TandemError):
    code = "UNAUTHENTICATED"


class DeadlineExceeded(TandemError):
    """A peer stayed silent (or stopped reading) for longer than allowed."""

    code = "DEADLINE_EXCEEDED"


class ProtocolError(TandemError):
    """The cloud answered something the protocol does not allow."""


class CloudUnavailable(TandemError):
    """The edge could not reach the cloud, or the stream broke."""

    code = "UNAVAILABLE"
