"""Builds and runs the cloud gRPC server: Tandem + health checking + reflection.

Calls pass the token check (cloud/auth.py, when tokens are configured), then the error
mapping (cloud/errors.py), then the servicer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud import dtype as dtypes
from cloud.auth import TokenAuthInterceptor, load_tokens, server_credentials
from cloud.config import CloudConfig
from cloud.errors import ErrorInterceptor
from cloud.goodput import GoodputShaper
from cloud.metrics import CloudMetrics
from cloud.prefix_cache import PrefixCache
from cloud.registry import SessionRegistry
from cloud.scheduler import Scheduler
from cloud.service import TandemService
from cloud.target_engine import TargetEngine, default_kv_budget_bytes
from common.channel import TRANSPORT_OPTIONS, is_loopback, keepalive_options
from common.errors import InvalidArgument
from common.pb.tandem.v1 import tandem_pb2, tandem_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = tandem_pb2.DESCRIPTOR.services_by_name["Tandem"].full_name


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    service: TandemService
    health: health.aio.HealthServicer
    worker: Scheduler  # the model thread (cloud/scheduler.py)
    metrics: CloudMetrics
    auth: TokenAuthInterceptor | None = None
    metrics_port: int = 0  # where /metrics is served; 0: not served

    @property
    def registry(self) -> SessionRegistry:
        return self.service.registry

    async def drain(self, timeout_s: float) -> None:
        """Health NOT_SERVING, new sessions refused, live ones told to move; waits for them to go.

        A load balancer's health check (or a client's round_robin health watch) stops sending
        new sessions here; the edges resume their answers on other replicas at once.
        """
        await self.health.enter_graceful_shutdown()  # every service NOT_SERVING, for good
        self.service.drain()
        live = len(self.registry)
        log.info("draining: health NOT_SERVING, %d live session(s) told to resume elsewhere", live)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(self.registry) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if len(self.registry):
            log.warning("drain timeout (%gs): %d session(s) still open", timeout_s, len(self.registry))
        else:
            log.info("drained: no live session left")

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        self.worker.shutdown()
        self.metrics.close()


def channel_options(config: CloudConfig) -> list[tuple[str, int]]:
    """Message size and keepalive: a dead edge is noticed within keepalive + keepalive_timeout."""
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        *keepalive_options(config.keepalive_s, config.keepalive_timeout_s),
        # Edges ping too (common/channel.py). grpc's default answers pings more often than every
        # 5 minutes on a quiet connection with GOAWAY "too_many_pings", killing paused streams.
        ("grpc.http2.min_ping_interval_without_data_ms", round(config.min_client_ping_interval_s * 1000)),
        *TRANSPORT_OPTIONS,
        # Without it a second server on a port in use would share it silently instead of failing.
        ("grpc.so_reuseport", 0),
    ]


def kv_budget_bytes(config: CloudConfig, model: TargetEngine) -> int:
    """The KV pool's size: --max-kv-mib; else what --max-sessions sessions of the longest context
    could reserve (no more could ever be admitted), at most half the memory free where the model
    runs. A small model's cloud so stays small, and leaves room to fork."""
    if config.max_kv_mib:
        return config.max_kv_mib << 20
    worst_case = config.max_sessions * config.limits.context_for(model.max_context) * model.kv_bytes_per_token
    return min(worst_case, default_kv_budget_bytes(model))


def load_security(config: CloudConfig) -> tuple[TokenAuthInterceptor | None, grpc.ServerCredentials | None]:
    """The token checker and TLS credentials the config asks for (files are read now)."""
    config.validate()
    auth = None
    if config.auth_tokens_file:
        auth = TokenAuthInterceptor(load_tokens(config.auth_tokens_file), source=config.auth_tokens_file)
    credentials = None
    if config.tls_cert:
        credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
    return auth, credentials


async def start_server(config: CloudConfig, model: TargetEngine, security=None) -> RunningServer:
    """Starts serving `model` (any cloud.target_engine.TargetEngine); returns once the port is bound.

    `security` is load_security(config)'s result, read here when not given.
    """
    auth, credentials = security or load_security(config)
    metrics = CloudMetrics()
    batch_tokens = config.max_batch_tokens or dtypes.batch_tokens(getattr(model, "dtype_name", None))
    worker = Scheduler(model, batch_tokens, metrics, config.batch_wait_ms / 1000,
                       kv_budget_bytes=kv_budget_bytes(config, model),
                       shaper=GoodputShaper(enabled=config.goodput_shaping, fixed_cap=config.draft_cap))
    registry = SessionRegistry(config.max_sessions, worker.kv.allocator)  # admits what the pool holds
    metrics.watch(lambda: len(registry), lambda: worker.kv.used_bytes, worker.kv.capacity_bytes)
    prefix_cache = None
    if config.prefix_cache_mb:
        prefix_cache = PrefixCache(config.prefix_cache_mb << 20, model.kv_bytes_per_token)
        prefix_cache.attach(worker.kv.allocator)  # its blocks go back to the pool when sessions need them
    service = TandemService(model, worker, registry, config.limits, prefix_cache, config.idle_timeout_s,
                            metrics=metrics)
    server = grpc.aio.server(
        interceptors=[i for i in (auth, ErrorInterceptor(on_finished=metrics.rpc_finished)) if i is not None],
        options=channel_options(config),
    )
    tandem_pb2_grpc.add_TandemServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{config.host}:{config.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise InvalidArgument(f"cannot listen on {address}: the port is in use, or the host is not an address of "
                              "this machine; pick another --port (0 picks a free one)")
    service.replica = config.replica_name or f"{socket.gethostname()}:{port}"
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if not (credentials and auth) and not is_loopback(config.host):
        log.warning("serving %s without %s: any client that reaches it may use it (see README: Deployment)",
                    address, " or ".join(w for w, on in (("TLS", credentials), ("tokens", auth)) if not on))
    log.info("security: %s, %s; KV budget %.0f MiB (%d B/token); %d tokens per pass at most; idle timeout %gs",
             "mutual TLS" if config.tls_client_ca else "TLS" if credentials else "plaintext (no TLS)",
             "bearer tokens required" if auth else "no auth", registry.kv_budget_bytes / 2**20,
             model.kv_bytes_per_token, worker.max_batch_tokens, config.idle_timeout_s)
    metrics_port = metrics.serve(config.host, config.metrics_port) if config.metrics_port else 0
    if metrics_port:
        log.info("metrics: http://%s:%d/metrics", config.host, metrics_port)
    return RunningServer(server, port, service, health_servicer, worker, metrics, auth, metrics_port)


def load_model(config: CloudConfig):
    from cloud.model import LoadOptions, TargetModel

    model = TargetModel.load(config.model,
                             LoadOptions(config.device, config.dtype, config.threads, config.greedy_head))
    model.warmup()
    return model


async def serve(config: CloudConfig) -> None:
    """`tandem cloud`: loads the model, serves until SIGTERM/SIGINT, then drains gracefully."""
    security = load_security(config)  # a bad certificate or token file fails before the slow load
    log.info("loading target model %s ...", config.model or "(default SmolLM2-135M-Instruct)")
    model = await asyncio.to_thread(load_model, config)
    running = await start_server(config, model, security)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if running.auth is not None:
        loop.add_signal_handler(signal.SIGHUP, running.auth.reload)
    scheme = "tls" if config.tls_cert else "plaintext"
    print(
        f"tandem cloud ready: model={model.name} device={model.device} "
        f"listening on {config.host}:{running.port} ({scheme}) replica={running.service.replica}",
        flush=True,
    )
    await stop.wait()
    await running.drain(config.drain_timeout_s)
    log.info("shutting down (grace %.0fs)", config.grace_s)
    await running.stop(config.grace_s)
