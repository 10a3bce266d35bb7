"""Builds and runs the cloud gRPC server: Tandem + health checking + reflection."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud.config import CloudConfig
from cloud.errors import ErrorInterceptor
from cloud.registry import SessionRegistry
from cloud.service import TandemService
from cloud.worker import ModelWorker
from common.pb.tandem.v1 import tandem_pb2, tandem_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = tandem_pb2.DESCRIPTOR.services_by_name["Tandem"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    service: TandemService
    health: health.aio.HealthServicer
    worker: ModelWorker

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        self.worker.shutdown()


async def start_server(config: CloudConfig, model) -> RunningServer:
    """Starts serving `model` (a cloud.model.TargetModel); returns once the port is bound."""
    worker = ModelWorker()
    registry = SessionRegistry(config.max_sessions)
    service = TandemService(model, worker, registry, config.limits)
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Bandwidth-delay probing pings ride on data frames; with messages of a few dozen
            # bytes they were a fifth to a quarter of a session's bytes, for windows that never
            # need to grow.
            ("grpc.http2.bdp_probe", 0),
        ],
    )
    tandem_pb2_grpc.add_TandemServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, service, health_servicer, worker)


def load_model(config: CloudConfig):
    from cloud.model import LoadOptions, TargetModel

    model = TargetModel.load(config.model, LoadOptions(config.device, config.dtype, config.threads))
    model.warmup()
    return model


async def serve(config: CloudConfig) -> None:
    """`tandem cloud`: loads the model, serves until SIGTERM/SIGINT, then drains gracefully."""
    log.info("loading target model %s ...", config.model or "(default SmolLM2-135M-Instruct)")
    model = await asyncio.to_thread(load_model, config)
    running = await start_server(config, model)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"tandem cloud ready: model={model.name} device={model.device} "
        f"listening on {config.host}:{running.port}",
        flush=True,
    )
    await stop.wait()
    log.info("shutting down (grace %.0fs)", config.grace_s)
    await running.stop(config.grace_s)
