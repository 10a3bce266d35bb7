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


class ContextTooLong(InvalidArgument):
    """A prompt longer than a model's context; the message names both lengths."""

    api_code = "context_length_exceeded"  # OpenAI's error code for it (tandem serve)


class FailedPrecondition(TandemError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(TandemError):
    """A server at its limit. retry_after_s: when a retry may succeed (the server sends it as gRPC's
    retry pushback, trailing metadata `grpc-retry-pushback-ms`, gRFC A6); None: no hint."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthenticated(TandemError):
    code = "UNAUTHENTICATED"


class DeadlineExceeded(TandemError):
    """A peer stayed silent (or stopped reading) for longer than allowed."""

    code = "DEADLINE_EXCEEDED"


class Draining(TandemError):
    """The replica is shutting down and takes no new session: another replica should."""

    code = "UNAVAILABLE"


class ProtocolError(TandemError):
    """The cloud answered something the protocol does not allow."""


class CloudUnavailable(TandemError):
    """The edge could not reach the cloud, or the stream broke."""

    code = "UNAVAILABLE"
