"""Who may talk to the cloud: TLS server credentials and bearer-token authentication.

Tokens travel in gRPC metadata as `authorization: Bearer <token>` (RFC 6750). They are
checked once per call, before any handler runs or any session memory is taken. Health
checks stay open so that load balancers and orchestrators can probe without a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

import grpc

from cloud.handler_wrapping import same_kind
from common.errors import InvalidArgument
from common.settings import read_config_file, read_tokens

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
_SCHEME = "bearer"


def load_tokens(path: str | Path) -> list[bytes]:
    """The tokens of a tokens file: one per line; blank lines and `#` comments are skipped."""
    tokens = read_tokens(path, "--auth-tokens-file")
    if not tokens:
        raise InvalidArgument(f"--auth-tokens-file {str(path)!r} holds no token; every call would be refused")
    if any(len(t.split()) != 1 for t in tokens):
        raise InvalidArgument(f"--auth-tokens-file {str(path)!r}: a token may not contain whitespace")
    return [t.encode() for t in tokens]


def server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    """TLS credentials; with client_ca, clients must present a certificate signed by it (mutual TLS)."""
    chain = read_config_file(cert, "--tls-cert")
    private_key = read_config_file(key, "--tls-key")
    root = read_config_file(client_ca, "--tls-client-ca") if client_ca else None
    return grpc.ssl_server_credentials([(private_key, chain)], root_certificates=root,
                                       require_client_auth=root is not None)


def _digest(token: bytes) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of the length
    # of the secret as well as of its contents.
    return hashlib.sha256(token).digest()


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid bearer token with UNAUTHENTICATED; health checks pass freely."""

    def __init__(self, tokens: list[bytes], source: str | Path | None = None):
        self._digests = [_digest(t) for t in tokens]
        self.source = source

    def reload(self) -> None:
        """Re-reads the tokens file (on SIGHUP), keeping the old tokens if the new file is unusable."""
        try:
            self._digests = [_digest(t) for t in load_tokens(self.source)]
            log.info("reloaded %d auth tokens from %s", len(self._digests), self.source)
        except (InvalidArgument, UnicodeDecodeError) as exc:
            log.error("kept the previous auth tokens: %s", exc)

    def check(self, metadata) -> str | None:
        """None when the metadata carries a valid token, else why not (safe to show the caller)."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return "missing credentials: send the metadata 'authorization: Bearer <token>'"
        value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != _SCHEME or not token.strip():
            return "malformed authorization metadata: expected 'Bearer <token>'"
        presented = _digest(token.strip().encode())
        # Compare with every token, without stopping at a match, so timing says nothing about which.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return None if matched else "invalid bearer token"

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        problem = self.check(handler_call_details.invocation_metadata)
        if problem is None:
            return handler
        return _refusal(handler, problem)


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only answers UNAUTHENTICATED."""

    async def refuse(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # The request is never read, so it is never deserialized.
    return same_kind(handler, lambda _behavior: refuse, request_deserializer=None)
