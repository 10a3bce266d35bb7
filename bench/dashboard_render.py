"""A picture of deploy/grafana/tandem-dashboard.json's cloud panels, from real Prometheus scrapes.

    PYTHONPATH=. python -m bench.dashboard_render --seconds 60 --out docs/dashboard.png

Grafana does not run here, so this draws what its panels would show: a pinned `tandem cloud`
(--metrics-port) serves a ramp of hybrid sessions (the load drafter of bench/load.py) and
cloud-only sessions, its /metrics is scraped every --every seconds, and each panel's PromQL is
evaluated on the scrapes by hand (rates as differences between consecutive scrapes). The
edge's panels need a `tandem serve` and are not drawn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import types
import urllib.request
from pathlib import Path


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def drive(load, seconds: float, most: int) -> None:
    """Sessions ramping from 1 to `most` over `seconds`, half hybrid, half cloud-only, each answering
    one prompt after another."""
    from bench.load import cloud_session, hybrid_session

    started = time.monotonic()

    async def slot(i: int):
        await asyncio.sleep(i * seconds / (2 * most))  # join one by one over the first half
        j = 0
        while time.monotonic() - started < seconds:
            prompt = (i + j) % len(load.prompts)
            await (hybrid_session(load, prompt, seed=j) if i % 2 == 0 else cloud_session(load, prompt))
            j += 1

    await asyncio.gather(*(slot(i) for i in range(most)))


def series(scrapes: list[tuple[float, dict]]) -> dict[str, list[tuple[float, float]]]:
    """Each panel's values between consecutive scrapes (a rate over the interval)."""
    def total(m, name):
        return sum(v for (n, _), v in m.items() if n == name)

    out = {k: [] for k in ("goodput", "wasted", "verified", "acceptance", "per_pass", "live", "pass_ms", "kv")}
    t0 = scrapes[0][0]
    for (ta, a), (tb, b) in zip(scrapes, scrapes[1:]):
        t, dt = tb - t0, tb - ta
        d = {name: total(b, name) - total(a, name) for name in (
            "tandem_generated_tokens_total", "tandem_forward_pass_seconds_total",
            "tandem_spec_decode_num_wasted_draft_tokens_total", "tandem_spec_decode_num_draft_tokens_total",
            "tandem_spec_decode_num_accepted_tokens_total", "tandem_batch_sessions_sum",
            "tandem_batch_sessions_count")}
        if d["tandem_forward_pass_seconds_total"] > 0:
            out["goodput"].append((t, d["tandem_generated_tokens_total"] / d["tandem_forward_pass_seconds_total"]))
            out["pass_ms"].append((t, 1000 * d["tandem_forward_pass_seconds_total"]
                                   / max(1, d["tandem_batch_sessions_count"])))
        out["wasted"].append((t, d["tandem_spec_decode_num_wasted_draft_tokens_total"] / dt))
        out["verified"].append((t, d["tandem_spec_decode_num_draft_tokens_total"] / dt))
        if d["tandem_spec_decode_num_draft_tokens_total"]:
            out["acceptance"].append((t, d["tandem_spec_decode_num_accepted_tokens_total"]
                                      / d["tandem_spec_decode_num_draft_tokens_total"]))
        if d["tandem_batch_sessions_count"]:
            out["per_pass"].append((t, d["tandem_batch_sessions_sum"] / d["tandem_batch_sessions_count"]))
        out["live"].append((t, total(b, "tandem_sessions_live")))
        out["kv"].append((t, total(b, "tandem_kv_cache_usage_ratio")))
    return out


def render(scrapes: list[tuple[float, dict]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = series(scrapes)
    last = scrapes[-1][1]
    drafts = sum(v for (n, _), v in last.items() if n == "tandem_spec_decode_num_drafts_total") or 1
    positions = sorted(((int(dict(labels)["position"]), v / drafts) for (n, labels), v in last.items()
                        if n == "tandem_spec_decode_num_accepted_tokens_per_pos_total"))
    plt.style.use("dark_background")
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    panels = [
        ("Goodput: committed tokens per forward-pass second", [("goodput", s["goodput"])]),
        ("Wasted draft tokens/s (verified, rejected)", [("wasted", s["wasted"]), ("verified", s["verified"])]),
        ("Acceptance rate", [("accepted / drafted", s["acceptance"])]),
        ("Sessions live and per forward pass", [("live", s["live"]), ("per pass", s["per_pass"])]),
        ("Forward pass time, mean (ms)", [("mean", s["pass_ms"])]),
    ]
    for ax, (name, lines) in zip(axes.flat, panels):
        for label, points in lines:
            if points:
                ax.plot(*zip(*points), label=label, linewidth=1.6)
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.2)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_ylim(bottom=0)
    ax = axes.flat[5]
    if positions:
        ax.bar([p for p, _ in positions], [v for _, v in positions], color="tab:green")
    ax.set_title("Accepted by position in the block, per draft block", fontsize=10, loc="left")
    ax.set_xlabel("position (0 = first draft)")
    ax.grid(alpha=0.2)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=3.0)
    parser.add_argument("--sessions", type=int, default=12, help="sessions at the end of the ramp")
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--cloud-cpus", default="0")
    parser.add_argument("--edge-cpus", default="1")
    parser.add_argument("--out", default="docs/dashboard.png")
    args = parser.parse_args(argv)
    from bench.capacity import setup_load
    from bench.load import _free_port
    from bench.pin import disjoint_cpus
    from bench.processes import CloudProcess

    _, edge_cpus = disjoint_cpus(args.cloud_cpus, args.edge_cpus)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    cloud = CloudProcess(args.cloud_cpus, args.model, out.with_suffix(".cloud.log"),
                         extra_args=["--metrics-port", str(port), "--dtype", args.dtype, "--idle-timeout", "0"])
    load_start = os.getloadavg()[0]
    try:
        os.sched_setaffinity(0, edge_cpus)

        async def run():
            settings = types.SimpleNamespace(draft_model=None, prompts=8, max_tokens=48, load_draft_tokens=8)
            load, setup = await setup_load(settings, f"{cloud.address[0]}:{cloud.address[1]}", ["hybrid"])
            load.corrupt_rate = 0.1
            scrapes = [(time.monotonic(), scrape(port))]

            async def sample():
                while True:
                    await asyncio.sleep(args.every)
                    scrapes.append((time.monotonic(), scrape(port)))

            sampler = asyncio.ensure_future(sample())
            try:
                await drive(load, args.seconds, args.sessions)
            finally:
                sampler.cancel()
                await setup["channel"].close()
            return scrapes

        scrapes = asyncio.run(run())
        dtype = cloud.dtype
    finally:
        cloud.stop()
    render(scrapes, out, f"Tandem dashboard panels from {len(scrapes)} real scrapes of tandem cloud /metrics "
                         f"({dtype}, one core; 1 -> {args.sessions} sessions, half hybrid; load average "
                         f"{load_start:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"wrote {out} from {len(scrapes)} scrapes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
