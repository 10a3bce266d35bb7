"""`tandem cloud`: serve the target model over gRPC until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio

from cloud.config import CloudConfig
from common.extras import require_extra


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "cloud",
        help="serve the target model (verification + generation) over gRPC",
        description="Serve the target model over gRPC: Speculate (verify drafts), Generate (cloud-only), "
                    "Info, plus grpc.health.v1 and server reflection. Logs one 'ready' line, serves until "
                    "SIGTERM/SIGINT, then drains in-flight calls.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    CloudConfig.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    require_extra("cloud", "tandem cloud")
    from cloud.server import serve
    from common.checks import check_port_free

    config = CloudConfig.from_args(args)
    check_port_free(config.host, config.port)  # before the model load, not after it
    asyncio.run(serve(config))
    return 0
