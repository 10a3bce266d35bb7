"""`tandem health`: a health probe for orchestrators, speaking TLS and mutual TLS.

Kubernetes' built-in gRPC probe cannot present TLS; an exec probe running this can. It
needs no bearer token: the cloud leaves grpc.health.v1 open.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import settings
from common.channel import ChannelSecurity, ChannelSettings, open_channel, split_cloud
from common.checks import check_address, check_range


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "health",
        help="probe a cloud's health (exit 0 when SERVING)",
        description="Ask a cloud's grpc.health.v1 service whether it is SERVING: exit 0 if so, 1 otherwise "
                    "(NOT_SERVING while it drains, or unreachable). No token needed.",
    )
    parser.add_argument("--cloud", metavar="HOST:PORT[,HOST:PORT...]",
                        default=settings.env_value("CLOUD", "127.0.0.1:50051"),
                        help="the cloud, or a comma-separated list of replicas: each is probed and reported on "
                             "its own line, and the exit status is 0 only when all are SERVING "
                             "(default %(default)s) [TANDEM_CLOUD]")
    parser.add_argument("--service", default="", help="service name to ask about; '' = the whole server")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before giving up (default %(default)s)")
    parser.add_argument("--metrics-port", default="", metavar="PORT[,PORT...]",
                        help="also read each replica's Prometheus /metrics on this port (its `tandem cloud "
                             "--metrics-port`; one port for all replicas, or one per replica in --cloud's order) "
                             "and print " + ", ".join(METRICS))
    settings.add_arguments(parser, ChannelSettings)
    parser.set_defaults(run=run)


# What `--metrics-port` prints per replica: the metric (summed over its labels) under a short name.
METRICS = {"sessions_live": "tandem_sessions_live", "resumed_sessions": "tandem_resumed_sessions_total",
           "drain_notices": "tandem_drain_notices_total"}


async def check(address: str, security: ChannelSecurity, service: str = "", timeout_s: float = 5.0) -> str:
    """The serving status's name (SERVING, NOT_SERVING, ...), or UNREACHABLE: <why>."""
    async with open_channel(address, security) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return f"UNREACHABLE: {exc.code().name}: {exc.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def run(args: argparse.Namespace) -> int:
    replicas = split_cloud(args.cloud)
    for replica in replicas:
        check_address(replica, "--cloud")
    check_range(args.timeout, "--timeout", 0, low_open=True)
    channel = settings.from_args(ChannelSettings, args)
    channel.validate()
    security = channel.security()
    ports = _metrics_ports(args.metrics_port, len(replicas))
    statuses = asyncio.run(check_all(replicas, security, args.service, args.timeout))
    lines = [status + (_metrics_suffix(replica, port, args.timeout) if port else "")
             for replica, status, port in zip(replicas, statuses, ports)]
    if len(replicas) == 1:
        print(lines[0], file=sys.stdout if statuses[0] == "SERVING" else sys.stderr)
    else:
        for replica, line in zip(replicas, lines):
            print(f"{replica}: {line}")
    return 0 if all(status == "SERVING" for status in statuses) else 1


def _metrics_ports(value: str, replicas: int) -> list[int]:
    try:
        ports = [int(p) for p in value.split(",") if p.strip()] if value else [0]
    except ValueError:
        raise SystemExit(f"tandem health: --metrics-port takes port numbers, got {value!r}") from None
    if len(ports) == 1:
        return ports * replicas
    if len(ports) != replicas:
        raise SystemExit(f"tandem health: {len(ports)} metrics ports for {replicas} replicas")
    return ports


def _metrics_suffix(replica: str, port: int, timeout_s: float) -> str:
    """ " sessions_live=N resumed_sessions=N drain_notices=N" from the replica's /metrics, or why not."""
    host = replica.rpartition(":")[0] or replica
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError as exc:
        return f" metrics unreachable ({exc})"
    values = {short: metric_sum(text, name) for short, name in METRICS.items()}
    return "".join(f" {short}={value:g}" for short, value in values.items() if value is not None)


def metric_sum(exposition: str, name: str) -> float | None:
    """The sum of a metric's samples over all its labels in Prometheus text format (None if absent)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
              if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " ")]
    return sum(values) if values else None


async def check_all(replicas: list[str], security: ChannelSecurity, service: str, timeout_s: float) -> list[str]:
    """Each replica's status, probed at once (one slow replica does not delay the others' answers)."""
    return await asyncio.gather(*(check(replica, security, service, timeout_s) for replica in replicas))
