"""`tandem bench`'s flags, declared once (common/settings.py) as cloud/config.py and edge/config.py do.

BenchConfig is the two-process benchmark over emulated links; LoadConfig the load benchmark's
own flags (`--sessions`: many concurrent sessions against one cloud). The flag names and
defaults are the ones the README documents; argparse dests are the field names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.prompts import PROMPTS
from cloud.config import CloudConfig
from common.settings import setting

LOAD = "load benchmark (with --sessions: many concurrent sessions, one cloud)"


def _cloud_choices(name: str) -> tuple:
    """The choices `tandem cloud` declares for one of its settings (so a bad value fails at parse time)."""
    return next(f.metadata["setting"].choices for f in dataclasses.fields(CloudConfig) if f.name == name)


@dataclass
class BenchConfig:
    rtt_ms: str = setting("0,20,50,100", "round-trip times to emulate, comma-separated")
    max_tokens: int = setting(128, "new tokens per generation")
    prompts: int = setting(4, f"how many built-in prompts (1-{len(PROMPTS)})")
    modes: str = setting("hybrid,cloud,edge", "modes to run, comma-separated")
    out: str = setting("bench-results", "output directory")
    cloud_cpus: str = setting("0", "CPUs of the cloud process, e.g. 0 or 0-3")
    edge_cpus: str = setting("1", "CPUs of the edge process (disjoint from the cloud's)")
    jitter_ms: float = setting(0.0, "one-way jitter, uniform +/- this")
    bandwidth_mbps: float | None = setting(None, "link capacity each way (default: none)", type=float)
    ttft_prompt_tokens: str | None = setting(
        None, "instead of the throughput runs, measure time to first token of cloud-only and hybrid back to back "
              "on raw prompts of exactly these many tokens (e.g. 100,1000,3000), at each --rtt-ms; writes "
              "ttft.json and prints hybrid / cloud-only per length", metavar="N,N,...")
    ttft_repeats: int = setting(3, "pairs of runs per prompt length and RTT with --ttft-prompt-tokens")
    model: str | None = setting(None, "target model of the cloud (default: SmolLM2-135M-Instruct)")
    draft_model: str | None = setting(None, "draft GGUF of the edge (default: SmolLM2 Q4_1)")
    raw_prompts: bool = setting(False, "time raw continuations instead of chat prompts (for a pretrained target "
                                       "without a chat template of its own, such as the Gemma of `make gemma`)")
    temperature: float = setting(0.0, "sampling temperature (0: greedy)")
    top_p: float = setting(1.0, "nucleus sampling mass")
    top_k: int = setting(0, "top-k sampling (0: off)")
    seed: int = setting(1, "sampling seed of every generation")
    resume_after: int = setting(32, "also measure one resume: each prompt's hybrid answer with its connection "
                                    "reset after this many tokens, paired with the same answer unbroken; 0 skips it")
    resume_rtt_ms: float = setting(20.0, "round-trip time of the resume measurement")
    json_schemas: bool = setting(
        False, "instead of the throughput runs, measure acceptance under a grammar (bench/schema_rounds.py): at "
               "each --rtt-ms, each of the ten JSON Schemas' prompts answered, interleaved, cloud-only and hybrid "
               "with the draft masked by the grammar and unmasked, with the speculation flags given (the adaptive "
               "policy, as a user gets it); prints tokens per drafting round (rounds that verified drafts: with "
               "the adaptive policy the cloud may decode alone), acceptance per draft, tok/s and masked / "
               "unmasked; checks every answer is cloud-only's and valid; writes schemas.json. Greedy only")
    json_schemas_lockstep: bool = setting(
        True, "with --json-schemas, also compare masked and unmasked with the adaptive policy off (6 drafts per "
              "block, one block in flight), so block lengths are equal and only the drafts differ: on the "
              "default pair the adaptive policy lets the cloud decode nearly all of these short answers alone "
              "(a few drafting rounds, too few to decide), so this pair gives the masked / unmasked figure",
        negatable=True)


@dataclass
class LoadConfig:
    sessions: str | None = setting(
        None, "run the load benchmark at these concurrent session counts, e.g. 1,4,16 (modes: the hybrid and "
              "cloud ones of --modes); writes load.json and load.png", metavar="N,N,...")
    corrupt_rate: float = setting(0.1, "hybrid load: the load drafter proposes the target's own continuation "
                                       "with each token corrupted at this rate (acceptance about 1 - rate)")
    load_draft_tokens: int = setting(8, "hybrid load: drafts per block")
    max_batch_tokens: int = setting(0, "the cloud's --max-batch-tokens (0: its default for the dtype)")
    batch_wait_ms: float = setting(50.0, "the cloud's --batch-wait-ms")
    long_prompt_tokens: int = setting(2000, "then rerun the largest hybrid load minus one while a prompt this "
                                            "long joins (0: skip)")
    answers_per_session: int = setting(
        1, "answers each concurrent session gives, one after another (prompts round-robin): above 1, N sessions "
           "stay live until the last few answers instead of all starting together and the row ending with the "
           "slowest (hybrid answers take different numbers of rounds)")
    dtype: str | None = setting(None, "the cloud's --dtype (default: its own default, or $TANDEM_DTYPE); "
                                      "at bfloat16 hybrid and cloud-only outputs may differ (see README: "
                                      "Load benchmark), float32 keeps them identical",
                                choices=_cloud_choices("dtype"))


CAPACITY = "capacity benchmark (with --capacity: the most concurrent sessions one cloud core serves at a service level)"


@dataclass
class CapacityConfig:
    capacity: bool = setting(False, "run the capacity benchmark (bench/capacity.py): ramp concurrent sessions on "
                                    "the pinned cloud until the service level fails, for cloud-only and hybrid; "
                                    "writes capacity.json and capacity.png")
    min_session_tokens_per_s: float = setting(8.0, "service level: p10 of the sessions' own tokens/s (after their "
                                                   "first token) at least this")
    max_ttft_s: float = setting(2.0, "service level: p90 time to first token at most this many seconds")
    capacity_rtt_ms: str = setting("0,20,50", "round-trip times of the capacity runs (one emulated link per session)")
    capacity_dtypes: str | None = setting(None, "the cloud's dtypes to measure one after another, e.g. "
                                                "float32,bfloat16 (default: --dtype, else auto)")
    acceptance: float = setting(0.9, "hybrid: the load drafter's per-token acceptance (each draft token is the "
                                     "target's own with this probability)")
    most_sessions: int = setting(128, "the ramp stops at this many concurrent sessions")
    capacity_goodput_shaping: bool = setting(True, "the cloud's --goodput-shaping (--no-capacity-goodput-shaping "
                                                   "measures without it)", negatable=True)
    real_drafters: int = setting(3, "then, at the hybrid capacity at 20 ms RTT (or the first RTT), run this many of "
                                    "the sessions as real llama.cpp edges (bench/worker.py) and check they still "
                                    "meet the service level; 0 skips it")
