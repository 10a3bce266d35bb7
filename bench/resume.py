"""What one resume costs: the same answer broken once mid-way and unbroken, paired, at one RTT.

Both runs take the same path (the edge worker's breakable connection, then the bench's relay
that emulates the link); the broken one has its connection reset after `break_after` tokens
and resumes (edge/resume.py): a new connection, a new session carrying the prompt and every
committed token, and the cloud's re-prefill. The difference is the resume's cost in time and
in bytes. Runs alternate broken/unbroken per prompt so drift on a shared machine hits both.
"""

from __future__ import annotations

import statistics
import time

from bench.processes import EdgeWorker
from bench.relay import RelayThread

SETTLE_S = 0.05


def measure(worker: EdgeWorker, relay: RelayThread, link, prompts: list[str], max_tokens: int,
            break_after: int) -> list[dict]:
    """One (unbroken, broken) pair per prompt, at `link`; returns one record per run."""
    relay.set_config(link)
    records = []
    for index, prompt in enumerate(prompts):
        for broken in (False, True):
            relay.reset_counters()
            result = worker.generate("hybrid", prompt, max_tokens, break_after=break_after if broken else 0)
            time.sleep(link.one_way_delay_s + SETTLE_S)
            stats = result["stats"]
            records.append({"prompt": index, "broken": broken, "token_ids": result["token_ids"],
                            "tcp_bytes_up": relay.bytes_up, "tcp_bytes_down": relay.bytes_down, **stats})
    return records


def summarize(records: list[dict]) -> dict:
    """Mean extra time and bytes of a resumed answer over its unbroken twin (same prompt)."""
    pairs = [(a, b) for a, b in zip(records[::2], records[1::2])]
    extra = lambda key: statistics.fmean(b[key] - a[key] for a, b in pairs)  # noqa: E731
    return {
        "pairs": len(pairs),
        "identical_output": all(a["token_ids"] == b["token_ids"] for a, b in pairs),
        "resumes": [b["resumes"] for _, b in pairs],
        "tokens": statistics.fmean(b["tokens"] for _, b in pairs),
        "elapsed_s_unbroken": statistics.fmean(a["elapsed_s"] for a, _ in pairs),
        "extra_s": extra("elapsed_s"),
        "resume_gap_s": statistics.fmean(b["resume_s"] for _, b in pairs),
        "extra_message_bytes_up": extra("bytes_sent"),
        "extra_message_bytes_down": extra("bytes_received"),
        "extra_tcp_bytes_up": extra("tcp_bytes_up"),
        "extra_tcp_bytes_down": extra("tcp_bytes_down"),
        "extra_forward_passes": extra("cloud_forward_passes"),
    }


def table(summary: dict, rtt_ms: float, break_after: int) -> str:
    s = summary
    return "\n".join([
        f"\nOne resume at {rtt_ms:g} ms RTT, the connection reset after {break_after} tokens "
        f"(mean of {s['pairs']} paired answers of {s['tokens']:.0f} tokens; output identical: {s['identical_output']}):",
        f"  unbroken answer            {s['elapsed_s_unbroken'] * 1000:8.1f} ms",
        f"  break to first resumed token {s['resume_gap_s'] * 1000:6.1f} ms (reconnect, new session, re-prefill)",
        f"  extra time of the resume   {s['extra_s'] * 1000:8.1f} ms (whole answer, broken minus unbroken)",
        f"  extra bytes up / down      {s['extra_message_bytes_up']:8.0f} / {s['extra_message_bytes_down']:.0f} "
        f"gRPC message bytes; {s['extra_tcp_bytes_up']:.0f} / {s['extra_tcp_bytes_down']:.0f} on the wire (TCP)",
        f"  extra cloud forward passes {s['extra_forward_passes']:8.1f} (the re-prefill)",
    ])
