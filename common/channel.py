"""Client channels to the cloud: TLS (optionally mutual), the bearer token, and keepalive.

Used by the edge and by `tandem health`, which share ChannelSettings (their flags). The token travels as per-call metadata
(`authorization: Bearer <token>`), which also works over plaintext to a TLS-terminating proxy
or on loopback; sending it in plaintext anywhere else is logged as a warning.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
from dataclasses import dataclass, field

import grpc

from common.errors import InvalidArgument
from common.settings import read_config_file, read_tokens, setting

log = logging.getLogger(__name__)

TOKEN_ENV = "TANDEM_TOKEN"
CONNECTION = "security and liveness of the cloud connection (see README: Deployment)"


@dataclass(frozen=True)
class ChannelSecurity:
    tls: bool = False  # TLS with the system's trusted roots (implied by the fields below)
    ca_file: str | None = None  # PEM roots that sign the cloud's certificate
    client_cert: str | None = None  # mutual TLS: this client's PEM certificate chain...
    client_key: str | None = None  # ...and its private key
    token: str | None = field(default=None, repr=False)  # bearer token

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.ca_file or self.client_cert)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.uses_tls:
            return None
        if bool(self.client_cert) != bool(self.client_key):
            raise InvalidArgument("--client-cert and --client-key go together")
        roots = read_config_file(self.ca_file, "--cloud-ca") if self.ca_file else None
        key = read_config_file(self.client_key, "--client-key") if self.client_key else None
        chain = read_config_file(self.client_cert, "--client-cert") if self.client_cert else None
        return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


@dataclass(frozen=True)
class ChannelSettings:
    """How every command that dials the cloud reaches it: TLS, mutual TLS and the bearer token."""

    cloud_ca: str | None = setting(None, "connect with TLS and trust the cloud's certificate if this PEM CA "
                                         "signed it", env="CLOUD_CA", metavar="FILE", group=CONNECTION)
    tls: bool = setting(False, "connect with TLS, trusting the system's roots", env="TLS",
                        group=CONNECTION)
    client_cert: str | None = setting(None, "mutual TLS: present this PEM certificate chain (with --client-key)",
                                      env="CLIENT_CERT", metavar="FILE", group=CONNECTION)
    client_key: str | None = setting(None, "private key of --client-cert", env="CLIENT_KEY", metavar="FILE",
                                     group=CONNECTION)
    token_file: str | None = setting(None, "send the bearer token in this file (first line); without it, "
                                           "$TANDEM_TOKEN if set", env="TOKEN_FILE", metavar="FILE",
                                     group=CONNECTION)

    def validate(self) -> None:
        """InvalidArgument for files that cannot work (commands check before loading anything)."""
        from common.checks import check_key_pair, check_pem_certificate, check_readable_file

        if bool(self.client_cert) != bool(self.client_key):
            raise InvalidArgument("--client-cert and --client-key go together")
        if self.cloud_ca:
            check_pem_certificate(self.cloud_ca, "--cloud-ca")
        if self.client_cert:
            check_key_pair(self.client_cert, self.client_key, "--client-cert", "--client-key")
        if self.token_file:
            check_readable_file(self.token_file, "--token-file")
            read_token(self.token_file)

    def security(self, token: str | None = None) -> ChannelSecurity:
        """`token` (the SDK's), else the token file's, else $TANDEM_TOKEN."""
        return ChannelSecurity(tls=self.tls, ca_file=self.cloud_ca, client_cert=self.client_cert,
                               client_key=self.client_key, token=token or read_token(self.token_file))


def keepalive_options(time_s: float, timeout_s: float) -> list[tuple[str, int]]:
    """Ping a peer silent for time_s; drop the connection when an ack takes longer than timeout_s.

    The same on both ends: the edge's channel and the cloud's server.
    """
    return [
        ("grpc.keepalive_time_ms", round(time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(timeout_s * 1000)),
        # grpc core (1.85) closes the transport on an unanswered ping after *this* timeout
        # (default 1 minute), not after keepalive_timeout_ms; measured in tests/test_faults.py.
        ("grpc.http2.ping_timeout_ms", round(timeout_s * 1000)),
        # Keep pinging while a stream is open but quiet (grpc stops after 2 pings without data).
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclass(frozen=True)
class Keepalive:
    """A dead cloud is noticed within time_s + timeout_s while a call is open."""

    time_s: float = 5.0  # ping after this much silence (the cloud accepts pings every >= 1 s)
    timeout_s: float = 5.0  # no ack within this: the connection is dead, its calls fail UNAVAILABLE

    def options(self) -> list[tuple[str, int]]:
        return keepalive_options(self.time_s, self.timeout_s)


def read_token(token_file: str | None) -> str | None:
    """The bearer token: the first non-comment line of token_file, else $TANDEM_TOKEN, else None."""
    if token_file:
        tokens = read_tokens(token_file, "--token-file")
        if not tokens:
            raise InvalidArgument(f"--token-file {token_file!r} holds no token")
        return tokens[0]
    return os.environ.get(TOKEN_ENV) or None


# grpc backs off reconnects up to 2 minutes by default; a restarted cloud should be found in seconds.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 3000),
]


# Bandwidth-delay probing pings ride on data frames; with messages of a few dozen bytes they
# were a fifth to a quarter of a session's bytes, for windows that never need to grow. Both ends.
TRANSPORT_OPTIONS = [("grpc.http2.bdp_probe", 0)]


# Many replicas: gRPC's own round_robin over every address the target resolves to, each one
# watched through grpc.health.v1 (a draining replica reports NOT_SERVING and leaves the rotation).
HEALTH_SERVICE = "tandem.v1.Tandem"
BALANCED_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": HEALTH_SERVICE},
})


def split_cloud(cloud: str) -> list[str]:
    """The addresses of a --cloud value: "A,B,C" -> ["A", "B", "C"]; a single address or target alone."""
    parts = [part.strip() for part in cloud.split(",")]
    if not all(parts):
        raise InvalidArgument(f"--cloud {cloud!r} has an empty address")
    return parts


def channel_target(cloud: str) -> tuple[str, bool]:
    """The gRPC target for a --cloud value, and whether the channel balances over several replicas.

    HOST:PORT is used as is (it may be a load balancer: the channel then keeps one connection).
    A comma-separated list becomes an ipv4:/ipv6: address list, its host names resolved once
    now; a gRPC target with a scheme (dns:///name:port, ipv4:..., unix:...) is passed through
    and balanced, since it may resolve to many addresses (a Kubernetes headless Service).
    """
    if "://" in cloud or cloud.split(":", 1)[0] in ("dns", "ipv4", "ipv6", "unix", "unix-abstract"):
        return cloud, True
    addresses = split_cloud(cloud)
    if len(addresses) == 1:
        return addresses[0], False
    resolved = [_resolve(address) for address in addresses]
    families = {family for family, _ in resolved}
    if len(families) > 1:
        raise InvalidArgument(f"--cloud {cloud!r} mixes IPv4 and IPv6 addresses; gRPC needs one family per list")
    return f"{families.pop()}:" + ",".join(hostport for _, hostport in resolved), True


def _resolve(address: str) -> tuple[str, str]:
    """("ipv4" or "ipv6", "IP:PORT") for HOST:PORT."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument(f"cloud address {address!r} is not HOST:PORT")
    try:
        family, *_, sockaddr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise InvalidArgument(f"cannot resolve cloud address {address!r}: {exc}") from None
    if family == socket.AF_INET6:
        return "ipv6", f"[{sockaddr[0]}]:{port}"
    return "ipv4", f"{sockaddr[0]}:{port}"


def open_channel(address: str, security: ChannelSecurity = ChannelSecurity(),
                 keepalive: Keepalive = Keepalive(), options: list | None = None) -> grpc.aio.Channel:
    """A channel to `address`: HOST:PORT, a comma-separated list of them, or a gRPC target (see channel_target)."""
    target, balanced = channel_target(address)
    options = keepalive.options() + RECONNECT_OPTIONS + TRANSPORT_OPTIONS + list(options or [])
    if balanced:
        options.append(("grpc.service_config", BALANCED_SERVICE_CONFIG))
    credentials = security.credentials()
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=options)
    if security.token and not all(is_loopback(a.rpartition(":")[0].strip("[]") or a) for a in split_cloud(address)):
        log.warning("sending the bearer token to %s without TLS; pass --cloud-ca (or --tls)", address)
    return grpc.aio.insecure_channel(target, options=options)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an IP, without port) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
