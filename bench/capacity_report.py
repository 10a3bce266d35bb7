"""The capacity benchmark's table and plot (bench/capacity.py writes the JSON they read)."""

from __future__ import annotations

from pathlib import Path


def table(report: dict) -> str:
    level = report["service_level"]
    lines = [f"service level: p10 per-session tokens/s >= {level['min_p10_tokens_per_s']:g}, p90 time to first "
             f"token <= {level['max_p90_ttft_s']:g} s; load drafter acceptance {report['settings']['acceptance']:g}",
             f"{'dtype':<9} {'mode':<7} {'rtt ms':>6} {'capacity':>8}   samples (sessions: p10 tok/s, p90 TTFT s, "
             f"identical to alone)"]
    for dtype, rows in report["capacity"].items():
        for row in rows:
            samples = "  ".join(f"{s['sessions']}:{s['p10_tokens_per_s']:.1f},{s['p90_ttft_s']:.2f},"
                                f"{s['identical_to_alone']}/{s['sessions']}{'' if s['met'] else '!'}"
                                for s in row["samples"])
            lines.append(f"{dtype:<9} {row['mode']:<7} {row['rtt_ms']:>6g} {row['capacity']:>8}   {samples}")
    lines.append("(! marks a count that fails the service level)")
    for dtype, rows in report["capacity"].items():
        for row in (r for r in rows if "overload" in r):
            o = row["overload"]
            lines.append(f"overload {dtype} {row['mode']} {row['rtt_ms']:g} ms: {o['sessions']} sessions "
                         f"(2x capacity): "
                         f"{o['sessions'] - o['failed']} served ({o['identical_to_alone']} identical to alone), "
                         f"{o.get('refused', 0)} refused ({o.get('refused_with_retry_hint', 0)} with a retry hint), "
                         f"errors {o.get('errors', [])}; slowest {o['slowest_session_tokens_per_s']} tok/s, "
                         f"longest TTFT {o['longest_ttft_s']} s; cloud RSS {o['cloud_rss_mib_before_ramp']} -> "
                         f"{o['cloud_rss_mib_after']} MiB")
    for dtype, cloud in report["clouds"].items():
        real = cloud.get("real_drafters")
        if real:
            lines.append(f"real drafters {dtype} hybrid {real['rtt_ms']:g} ms: {real['real_drafters']} llama.cpp edges "
                         f"among {real['sessions']} sessions: {real['real_tokens_per_s']} tok/s, TTFT "
                         f"{real['real_ttft_s']} s, acceptance {real['real_acceptance']}, "
                         f"{real['real_identical_to_alone']}/{real['real_drafters']} identical to alone -> "
                         f"{'meet' if real['met'] else 'FAIL'} the service level")
    lines.append("\ntargets:")
    for t in report["targets"]:
        lines.append(f"  {t['figure']}: {t['measured']} (target {t['target']})")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """Per-session tokens/s (p10) against concurrent sessions, one panel per RTT, every mode and dtype,
    with the service level drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rtts = report["settings"]["rtt_ms"]
    fig, axes = plt.subplots(1, len(rtts), figsize=(4.6 * len(rtts), 4.2), squeeze=False)
    level = report["service_level"]["min_p10_tokens_per_s"]
    for ax, rtt in zip(axes[0], rtts):
        for dtype, rows in report["capacity"].items():
            for row in (r for r in rows if r["rtt_ms"] == rtt):
                xs = [s["sessions"] for s in row["samples"]]
                ax.plot(xs, [s["p10_tokens_per_s"] for s in row["samples"]],
                        marker="o" if row["mode"] == "hybrid" else "^",
                        color="tab:blue" if row["mode"] == "hybrid" else "tab:orange",
                        linestyle="-" if dtype == "bfloat16" else "--",
                        label=f"{row['mode']} {dtype} (capacity {row['capacity']})")
        ax.axhline(level, color="red", linewidth=1, label=f"service level {level:g} tok/s")
        ax.set(xlabel="concurrent sessions", ylabel="p10 per-session tokens / s", title=f"{rtt:g} ms RTT")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("tandem bench --capacity: one cloud core")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
