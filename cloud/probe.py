"""`tandem health`: a health probe for orchestrators, speaking TLS and mutual TLS.

Kubernetes' built-in gRPC probe cannot present TLS; an exec probe running this can. It
needs no bearer token: the cloud leaves grpc.health.v1 open.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import settings
from common.channel import ChannelSecurity, ChannelSettings, open_channel


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "health",
        help="probe a cloud's health (exit 0 when SERVING)",
        description="Ask a cloud's grpc.health.v1 service whether it is SERVING: exit 0 if so, 1 otherwise "
                    "(NOT_SERVING while it drains, or unreachable). No token needed.",
    )
    parser.add_argument("--cloud", metavar="HOST:PORT", default=settings.env_value("CLOUD", "127.0.0.1:50051"),
                        help="the cloud (default %(default)s) [TANDEM_CLOUD]")
    parser.add_argument("--service", default="", help="service name to ask about; '' = the whole server")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before giving up (default %(default)s)")
    settings.add_arguments(parser, ChannelSettings)
    parser.set_defaults(run=run)


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
    security = settings.from_args(ChannelSettings, args).security()
    status = asyncio.run(check(args.cloud, security, args.service, args.timeout))
    print(status, file=sys.stdout if status == "SERVING" else sys.stderr)
    return 0 if status == "SERVING" else 1
