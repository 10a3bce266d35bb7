"""The bench loop: for each emulated link, each prompt, each mode, one generation, measured.

Bytes are counted by the relay, i.e. on the TCP stream between the two processes (HTTP/2
frames, gRPC headers and trailers included), so every mode is charged what it really sent.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from bench.h2frames import FrameTally
from bench.processes import EdgeWorker
from bench.relay import LinkConfig, RelayThread

SETTLE_S = 0.05  # after the last token, for trailing frames (trailers, window updates) to land


@dataclass(frozen=True)
class Plan:
    rtts_ms: list[float]
    prompts: list[str]
    modes: list[str]
    max_tokens: int
    jitter_ms: float = 0.0
    bandwidth_mbps: float | None = None

    def link(self, rtt_ms: float) -> LinkConfig:
        """The emulated link: half the round trip each way, jitter and cap as asked."""
        return LinkConfig(
            one_way_delay_s=rtt_ms / 2000, jitter_s=self.jitter_ms / 1000,
            bandwidth_bytes_per_s=self.bandwidth_mbps * 1e6 / 8 if self.bandwidth_mbps else None, seed=0,
        )

    @property
    def total_runs(self) -> int:
        return len(self.rtts_ms) * len(self.prompts) * len(self.modes)


class Progress:
    """One status line on stderr: rewritten in place on a terminal, a line per run otherwise."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()

    def update(self, label: str, result: str = "") -> None:
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        width = 24
        filled = width * self.done // self.total
        line = (f"bench [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:<34} "
                f"{result:<22} elapsed {_clock(elapsed)}" + (f" eta {_clock(eta)}" if self.done else ""))
        if self.tty:
            self.stream.write("\r\033[K" + line)
        elif result:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def warm_up(worker: EdgeWorker, plan: Plan) -> None:
    """One short generation per mode, unrecorded: first calls pay lazy initialization."""
    for mode in plan.modes:
        worker.generate(mode, plan.prompts[0], min(16, plan.max_tokens))


def run(plan: Plan, worker: EdgeWorker, relay: RelayThread, frames: FrameTally, progress: Progress) -> list[dict]:
    """Every (link, prompt, mode) once; returns one record per generation.

    `frames` must be the relay's tap: it splits each generation's bytes by HTTP/2 frame type.
    """
    records = []
    for rtt in plan.rtts_ms:
        link = plan.link(rtt)
        relay.set_config(link)
        for index, prompt in enumerate(plan.prompts):
            for mode in plan.modes:
                label = f"rtt {rtt:g} ms, prompt {index + 1}/{len(plan.prompts)}, {mode}"
                progress.update(label)
                relay.reset_counters()
                frames.reset()
                result = worker.generate(mode, prompt, plan.max_tokens)
                time.sleep(link.one_way_delay_s + link.jitter_s + SETTLE_S)
                stats = result["stats"]
                records.append({
                    "rtt_ms": rtt, "prompt": index, "mode": mode,
                    "token_ids": result["token_ids"], "finish_reason": result["finish_reason"],
                    "tcp_bytes_up": relay.bytes_up, "tcp_bytes_down": relay.bytes_down,
                    "sse_bytes": result["sse_bytes"],
                    "h2": frames.snapshot(), "blocks": result["blocks"], **stats,
                })
                progress.done += 1
                progress.update(label, f"{stats['tokens_per_s']:.1f} tok/s")
    progress.finish()
    return records


TTFT_MAX_TOKENS = 4  # the prompt-length runs measure the first token; a few more show the answer goes on


def run_ttft(lengths: list[int], repeats: int, rtts_ms: list[float], plan: Plan, worker: EdgeWorker,
             relay: RelayThread, progress: Progress) -> list[dict]:
    """Cloud-only and hybrid back to back on raw prompts of each length, `repeats` times per RTT.

    Each repeat uses a prompt of its own (no draft cache carries over); the order of the two
    modes alternates, so neither always runs on a machine the other just warmed.
    """
    records = []
    for rtt in rtts_ms:
        relay.set_config(plan.link(rtt))
        for length in lengths:
            for repeat in range(repeats):
                modes = ("cloud", "hybrid") if repeat % 2 == 0 else ("hybrid", "cloud")
                for mode in modes:
                    label = f"rtt {rtt:g} ms, {length} prompt tokens, {mode}"
                    progress.update(label)
                    result = worker.generate(mode, None, TTFT_MAX_TOKENS, prompt_tokens=length,
                                             variant=1000 * length + repeat)
                    stats = result["stats"]
                    records.append({"rtt_ms": rtt, "prompt_tokens": length, "repeat": repeat, "mode": mode,
                                    "token_ids": result["token_ids"], **stats})
                    progress.done += 1
                    progress.update(label, f"TTFT {1000 * stats['ttft_s']:.0f} ms")
    progress.finish()
    return records


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"
