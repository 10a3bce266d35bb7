"""Checks of what a user typed, each failing with one InvalidArgument that says what is wrong
and what to do. Commands run them before loading anything, so bad input costs no model load
and never ends in a traceback.
"""

from __future__ import annotations

import math
import re
import ssl
from pathlib import Path

from common.errors import InvalidArgument

GGUF_MAGIC = b"GGUF"
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_address(address: str, flag: str) -> None:
    """HOST:PORT ([IPv6]:PORT) with a port in 1..65535; grpc's own schemes (unix:, dns:) pass."""
    if re.match(r"^(unix|unix-abstract|dns|ipv4|ipv6):", address):
        return
    match = _HOST_PORT.match(address)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise InvalidArgument(f"{flag} {address!r} is not HOST:PORT (e.g. 127.0.0.1:50051 or cloud.example.com:443)")


def check_port(port: int, flag: str = "--port") -> None:
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"{flag} {port} is not a port: use 1-65535, or 0 to pick a free one")


def check_range(value: float, flag: str, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    """low <= value <= high (low < value with low_open); None leaves a side unbounded."""
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lower = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        upper = "" if high is None else f"<= {high:g}"
        raise InvalidArgument(f"{flag} must be {' and '.join(b for b in (lower, upper) if b)}, got {value:g}")


def check_readable_file(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InvalidArgument(f"cannot read {flag} {path!r}: no such file")
    if not p.is_file():
        raise InvalidArgument(f"cannot read {flag} {path!r}: not a file")
    try:
        with p.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise InvalidArgument(f"{flag} {path!r} cannot be read: {exc.strerror or exc}") from None
    return p


def check_model_path(path: str, flag: str) -> None:
    """A GGUF file, or a Hugging Face model directory (with a config.json)."""
    p = Path(path)
    if not p.exists():
        raise InvalidArgument(f"{flag} {path!r}: no such file or directory (give a .gguf file or a Hugging Face "
                              "model directory)")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InvalidArgument(f"{flag} {path!r} is a directory without config.json: not a Hugging Face model "
                                  "directory (give one, or a .gguf file)")
        return
    check_readable_file(path, flag)
    with p.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise InvalidArgument(f"{flag} {path!r} is not a GGUF file (give a .gguf model or a Hugging Face model "
                                  "directory)")


def check_pem_certificate(path: str, flag: str) -> None:
    """A readable PEM file with at least one certificate (a CA bundle or a certificate chain)."""
    check_readable_file(path, flag)
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidArgument(f"{flag} {path!r} holds no PEM certificate ({exc.__class__.__name__}); "
                              "give the PEM file of a certificate") from None


def check_key_pair(cert: str, key: str, cert_flag: str, key_flag: str) -> None:
    """A PEM certificate chain and the private key that belongs to it."""
    check_readable_file(cert, cert_flag)
    check_readable_file(key, key_flag)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidArgument(f"{cert_flag} {cert!r} and {key_flag} {key!r} are not a PEM certificate and its "
                              f"private key ({getattr(exc, 'reason', None) or exc})") from None


def check_port_free(host: str, port: int, flag: str = "--port") -> None:
    """That this process can listen on host:port now (checked before a slow model load)."""
    import socket

    check_port(port, flag)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidArgument(f"--host {host!r} is not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            raise InvalidArgument(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another {flag} "
                                  "(0 picks a free one)") from None
