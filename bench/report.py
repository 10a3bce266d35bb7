"""Turns bench records into figures: a summary per (link, mode), the issue's targets, a table,
a JSON file and PNG plots. Every ratio compares modes measured in the same run."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

MODES = ("hybrid", "cloud", "edge")


def summarize(records: list[dict]) -> dict[float, dict[str, dict]]:
    """{rtt_ms: {mode: figures}}, each figure over all prompts of that link and mode."""
    groups: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["rtt_ms"], r["mode"])].append(r)
    cloud_ids = {(r["rtt_ms"], r["prompt"]): r["token_ids"] for r in records if r["mode"] == "cloud"}
    summary: dict[float, dict[str, dict]] = defaultdict(dict)
    for (rtt, mode), runs in sorted(groups.items()):
        tokens = sum(r["tokens"] for r in runs)
        rounds = sum(r["rounds"] for r in runs)
        drafted = sum(r["drafted"] for r in runs)
        compared = [r["token_ids"] == cloud_ids[(rtt, r["prompt"])] for r in runs if (rtt, r["prompt"]) in cloud_ids]
        summary[rtt][mode] = {
            "runs": len(runs),
            "tokens": tokens,
            "tokens_per_s": _div(tokens, sum(r["elapsed_s"] for r in runs)),
            "ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "tokens_per_round": _div(tokens, rounds) if mode != "edge" else None,
            "cloud_passes_per_token": _div(sum(r["cloud_forward_passes"] for r in runs), tokens),
            "tcp_bytes_per_token": _div(sum(r["tcp_bytes_up"] + r["tcp_bytes_down"] for r in runs), tokens),
            "tcp_bytes_up_per_token": _div(sum(r["tcp_bytes_up"] for r in runs), tokens),
            "tcp_bytes_down_per_token": _div(sum(r["tcp_bytes_down"] for r in runs), tokens),
            # The same answers as OpenAI-style SSE events, one chunk per token (bench/sse.py).
            "sse_bytes_per_token": _div(sum(r["sse_bytes"] for r in runs), tokens),
            # Share of verified drafts accepted; a rejection also discards the rest of its block.
            "accepted_share": _div(sum(r["accepted"] for r in runs), drafted) if drafted else None,
            "stale_drafted_share": _div(sum(r["stale_drafted"] for r in runs), drafted + sum(
                r["stale_drafted"] for r in runs)) if drafted else None,
            "identical_to_cloud": (sum(compared) / len(compared)) if compared and mode != "cloud" else None,
            "tcp_bytes_per_token_by_kind": _bytes_by_kind(runs, tokens) if mode != "edge" else None,
        }
    return dict(summary)


BYTE_KINDS = ("messages", "DATA framing", "HEADERS", "WINDOW_UPDATE", "PING", "other")


def _bytes_by_kind(runs: list[dict], tokens: int) -> dict[str, float]:
    """TCP bytes per token split into gRPC messages, their DATA framing, and other HTTP/2 frames.

    `messages` are the serialized protobuf messages the edge counted; `DATA framing` is the rest
    of the DATA frames (9-byte frame header, 5-byte gRPC length prefix).
    """
    kinds = dict.fromkeys(BYTE_KINDS, 0)
    for r in runs:
        messages = r["bytes_sent"] + r["bytes_received"]
        kinds["messages"] += messages
        for key, size in r["h2"]["bytes"].items():
            frame = key.split(" ", 1)[1]
            if frame == "DATA":
                kinds["DATA framing"] += size
            else:
                kinds[frame if frame in kinds else "other"] += size
        kinds["DATA framing"] -= messages
    return {kind: round(value / tokens, 2) for kind, value in kinds.items()} if tokens else {}


def ttft_ratios(records: list[dict]) -> list[float]:
    """Hybrid TTFT / cloud-only TTFT for each (RTT, prompt), the two runs taken back to back.

    Pairing cancels what the two share (prompt length, the load of the moment); 4 prompts per
    RTT leave a per-RTT median noisy by ~10 ms, so the target uses all pairs.
    """
    cloud = {(r["rtt_ms"], r["prompt"]): r["ttft_s"] for r in records if r["mode"] == "cloud"}
    return [r["ttft_s"] / cloud[(r["rtt_ms"], r["prompt"])] for r in records
            if r["mode"] == "hybrid" and cloud.get((r["rtt_ms"], r["prompt"]))]


def targets(summary: dict[float, dict[str, dict]], records: list[dict]) -> list[dict]:
    """The issue's targets, where this run measured what they need."""
    pairs = {rtt: m for rtt, m in summary.items() if "hybrid" in m and "cloud" in m}
    rows = []

    def add(figure: str, measured: float | None, bound: float, at_most: bool) -> None:
        if measured is not None:
            ok = measured <= bound if at_most else measured >= bound
            rows.append({"figure": figure, "target": f"{'<=' if at_most else '>='} {bound:.3g}",
                         "measured": round(measured, 3), "met": ok})

    for rtt, bound in ((20.0, 2.5), (100.0, 2.0)):
        if rtt in pairs:
            m = pairs[rtt]
            add(f"hybrid tok/s / cloud-only tok/s at {rtt:g} ms RTT",
                _div(m["hybrid"]["tokens_per_s"], m["cloud"]["tokens_per_s"]), bound, at_most=False)
    if pairs:
        add("cloud forward passes per generated token (hybrid, worst RTT)",
            max(m["hybrid"]["cloud_passes_per_token"] for m in pairs.values()), 0.2, at_most=True)
        add("TCP bytes per token, hybrid / cloud-only (worst RTT)",
            max(_div(m["hybrid"]["tcp_bytes_per_token"], m["cloud"]["tcp_bytes_per_token"]) for m in pairs.values()),
            1.0, at_most=True)
        add("TCP bytes per token, hybrid / an OpenAI SSE stream of the same answer (worst RTT)",
            max(_div(m["hybrid"]["tcp_bytes_per_token"], m["hybrid"]["sse_bytes_per_token"]) for m in pairs.values()),
            1 / 20, at_most=True)
        ratios = ttft_ratios(records)
        add(f"hybrid TTFT / cloud-only TTFT (median of {len(ratios)} paired runs, all RTTs)",
            statistics.median(ratios) if ratios else None, 1.1, at_most=True)
        add("hybrid output identical to cloud-only output (share of runs)",
            min(m["hybrid"]["identical_to_cloud"] for m in pairs.values()), 1.0, at_most=False)
    return rows


def ttft_by_length(records: list[dict]) -> list[dict]:
    """Per (RTT, prompt length): median TTFT of each mode and the median of paired ratios."""
    rows = []
    for rtt, length in sorted({(r["rtt_ms"], r["prompt_tokens"]) for r in records}):
        runs = [r for r in records if r["rtt_ms"] == rtt and r["prompt_tokens"] == length]
        by = {(r["mode"], r["repeat"]): r for r in runs}
        ratios = [by[("hybrid", k)]["ttft_s"] / by[("cloud", k)]["ttft_s"] for (mode, k) in by
                  if mode == "hybrid" and ("cloud", k) in by and by[("cloud", k)]["ttft_s"]]
        identical = [by[("hybrid", k)]["token_ids"] == by[("cloud", k)]["token_ids"] for (mode, k) in by
                     if mode == "hybrid" and ("cloud", k) in by]
        rows.append({
            "rtt_ms": rtt, "prompt_tokens": length, "pairs": len(ratios),
            "ttft_s_hybrid": statistics.median(r["ttft_s"] for r in runs if r["mode"] == "hybrid"),
            "ttft_s_cloud": statistics.median(r["ttft_s"] for r in runs if r["mode"] == "cloud"),
            "ratio": statistics.median(ratios) if ratios else None,
            "identical": all(identical) if identical else None,
        })
    return rows


def ttft_targets(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        if row["ratio"] is not None:
            out.append({"figure": f"hybrid TTFT / cloud-only TTFT, {row['prompt_tokens']}-token prompt at "
                                  f"{row['rtt_ms']:g} ms RTT (median of {row['pairs']} pairs)",
                        "target": "<= 1.1", "measured": round(row["ratio"], 3), "met": row["ratio"] <= 1.1})
    return out


def ttft_table(rows: list[dict], target_rows: list[dict]) -> str:
    head = f"{'RTT ms':>6} | {'prompt tokens':>13} | {'TTFT ms hybrid':>14} {'cloud':>7} | {'ratio':>6} | identical"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['rtt_ms']:>6g} | {r['prompt_tokens']:>13} | {_f(_ms(r['ttft_s_hybrid']), 14, 0)} "
                     f"{_f(_ms(r['ttft_s_cloud']), 7, 0)} | {_f(r['ratio'], 6, 3)} | "
                     f"{'-' if r['identical'] is None else ('yes' if r['identical'] else 'NO')}")
    lines += ["", "targets:"]
    lines += [f"  [{'met' if t['met'] else 'MISSED'}] {t['figure']}: {t['measured']} (target {t['target']})"
              for t in target_rows]
    return "\n".join(lines)


def table(summary: dict[float, dict[str, dict]], target_rows: list[dict]) -> str:
    """The terminal table: one row per link, then the targets."""
    head = (f"{'RTT ms':>6} | {'tok/s hybrid':>12} {'cloud':>6} {'edge':>6} | {'speedup':>7} | "
            f"{'TTFT ms hybrid':>14} {'cloud':>6} | {'passes/tok':>10} | {'TCP B/tok hybrid':>16} {'cloud':>6} "
            f"{'SSE':>6} | "
            f"{'tok/round':>9} | {'acc/draft':>9} | identical")
    lines = [head, "-" * len(head)]
    for rtt, m in sorted(summary.items()):
        h, c, e = (m.get(mode, {}) for mode in MODES)
        speedup = _div(h.get("tokens_per_s"), c.get("tokens_per_s"))
        identical = h.get("identical_to_cloud")
        lines.append(
            f"{rtt:>6g} | {_f(h.get('tokens_per_s'), 12, 1)} {_f(c.get('tokens_per_s'), 6, 1)} "
            f"{_f(e.get('tokens_per_s'), 6, 1)} | {_f(speedup, 6, 2)}x | "
            f"{_f(_ms(h.get('ttft_s')), 14, 0)} {_f(_ms(c.get('ttft_s')), 6, 0)} | "
            f"{_f(h.get('cloud_passes_per_token'), 10, 3)} | {_f(h.get('tcp_bytes_per_token'), 16, 1)} "
            f"{_f(c.get('tcp_bytes_per_token'), 6, 1)} {_f((h or c).get('sse_bytes_per_token'), 6, 1)} | "
            f"{_f(h.get('tokens_per_round'), 9, 2)} | "
            f"{_f(h.get('accepted_share'), 9, 3)} | {'-' if identical is None else f'{identical:.0%}'}"
        )
    kinds = {mode: _mean_kinds([m[mode]["tcp_bytes_per_token_by_kind"] for m in summary.values() if mode in m])
             for mode in ("hybrid", "cloud")}
    if any(kinds.values()):
        lines += ["", "where the TCP bytes go (bytes per generated token, mean over RTTs):",
                  f"{'mode':>8} | " + " ".join(f"{k:>13}" for k in BYTE_KINDS) + f" | {'total':>6}"]
        for mode, split in kinds.items():
            if split:
                lines.append(f"{mode:>8} | " + " ".join(f"{split[k]:>13.2f}" for k in BYTE_KINDS)
                             + f" | {sum(split.values()):>6.2f}")
    if target_rows:
        lines += ["", "targets:"]
        lines += [f"  [{'met' if t['met'] else 'MISSED'}] {t['figure']}: {t['measured']} (target {t['target']})"
                  for t in target_rows]
    return "\n".join(lines)


def plot(summary: dict[float, dict[str, dict]], records: list[dict], out_dir: Path) -> list[Path]:
    """tokens_per_s.png (tokens/s against RTT per mode) and tokens_per_round.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rtts = sorted(summary)
    paths = [out_dir / "tokens_per_s.png", out_dir / "tokens_per_round.png"]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode, marker in zip(MODES, "o^s"):
        xs = [r for r in rtts if mode in summary[r]]
        if xs:
            ax.plot(xs, [summary[r][mode]["tokens_per_s"] for r in xs], marker=marker, label=mode)
    ax.set(xlabel="emulated round-trip time (ms)", ylabel="generated tokens / s", title="Throughput against RTT")
    ax.set_ylim(0, 1.25 * ax.get_ylim()[1])  # headroom for the legend
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for mode, marker in zip(("hybrid", "cloud"), "o^"):
        xs = [r for r in rtts if mode in summary[r]]
        if xs:
            left.plot(xs, [summary[r][mode]["tokens_per_round"] for r in xs], marker=marker, label=mode)
    left.set(xlabel="emulated round-trip time (ms)", ylabel="tokens per cloud round", title="Mean tokens per round")
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend()
    for rtt in rtts:
        per_round = [accepted + 1 for r in records if r["mode"] == "hybrid" and r["rtt_ms"] == rtt
                     for _, accepted in r["blocks"]]
        if per_round:
            right.hist(per_round, bins=range(1, max(per_round) + 2), histtype="step", label=f"{rtt:g} ms")
    right.set(xlabel="tokens committed by one verification round (hybrid)", ylabel="rounds",
              title="Tokens per round, per RTT")
    right.legend()
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def _mean_kinds(splits: list[dict | None]) -> dict[str, float] | None:
    splits = [s for s in splits if s]
    return {k: sum(s[k] for s in splits) / len(splits) for k in BYTE_KINDS} if splits else None


def _div(a, b):
    return a / b if a is not None and b else None


def _ms(seconds):
    return None if seconds is None else 1000 * seconds


def _f(value, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"
