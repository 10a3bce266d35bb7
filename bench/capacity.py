"""`tandem bench --capacity`: how many concurrent sessions one cloud core serves at a service level.

    tandem bench --capacity --capacity-rtt-ms 0,20,50 --capacity-dtypes float32,bfloat16 --max-tokens 48

What an operator sizes a deployment by: the most concurrent sessions for which each still
gets a given speed and time to first token. The service level (ServiceLevel) is p10 of the
sessions' own tokens/s (after their first token) >= --min-session-tokens-per-s and p90 time to
first token <= --max-ttft-s. For each cloud dtype, round-trip time and mode (cloud-only
streaming, hybrid with the load drafter of bench/load.py at --acceptance per token), a ramp
doubles the concurrent sessions until the level fails, then bisects to the capacity
(find_capacity, a pure function of a measuring callback: tests/test_capacity.py drives it
with a scripted cloud of known capacity).

Every session has its own emulated link (bench/relay.py: one relay, one connection), since
hybrid pays a round trip per round and cloud-only streaming does not. Every output is compared
with the same prompt alone at the same dtype (at bfloat16 batching can flip a token: counted).
Writes capacity.json and capacity.png (per-session tokens/s against sessions, both modes, the
service level drawn) to --out; a progress line per measurement goes to stderr.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.load import Load, cloud_session, compare, hybrid_session, percentile
from edge.client import retry_pushback_s
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class ServiceLevel:
    min_p10_tokens_per_s: float = 8.0  # about reading speed
    max_p90_ttft_s: float = 2.0

    def met(self, sample: Sample) -> bool:
        return (sample.p10_tokens_per_s >= self.min_p10_tokens_per_s
                and sample.p90_ttft_s <= self.max_p90_ttft_s and not sample.failed)


@dataclass
class Sample:
    """One measurement: `sessions` concurrent sessions, each one's tokens/s and time to first token."""

    sessions: int
    tokens_per_s: list[float]  # per session: tokens after the first / seconds after the first
    ttft_s: list[float]
    failed: int = 0  # sessions that ended in an error (RESOURCE_EXHAUSTED, a timeout...)
    extra: dict = field(default_factory=dict)

    @property
    def p10_tokens_per_s(self) -> float:
        return percentile(self.tokens_per_s, 10)

    @property
    def p90_ttft_s(self) -> float:
        return percentile(self.ttft_s, 90)

    def to_json(self, level: ServiceLevel) -> dict:
        return {"sessions": self.sessions, "met": level.met(self), "failed": self.failed,
                "p10_tokens_per_s": round(self.p10_tokens_per_s, 2),
                "p50_tokens_per_s": round(percentile(self.tokens_per_s, 50), 2),
                "p90_ttft_s": round(self.p90_ttft_s, 3), "aggregate_tokens_per_s": self.extra.get("aggregate"),
                **{k: v for k, v in self.extra.items() if k != "aggregate"}}


async def find_capacity(measure: Callable[[int], Awaitable[Sample]], level: ServiceLevel, most: int = 256,
                        on_sample: Callable[[Sample, bool], None] = lambda s, met: None) -> tuple[int, list[Sample]]:
    """The most concurrent sessions (<= most) whose measurement meets `level`, and every sample taken.

    Ramp 1, 2, 4, ... until a count fails (or `most` passes), then bisect between the last count
    that met the level and the first that did not. Assumes meeting it is monotone in the count
    (more sessions never make each faster); 0 when even one session fails it.
    """
    samples: dict[int, Sample] = {}

    async def meets(n: int) -> bool:
        samples[n] = await measure(n)
        met = level.met(samples[n])
        on_sample(samples[n], met)
        return met

    good, bad, n = 0, None, 1
    while bad is None:
        if await meets(n):
            good = n
            if n == most:
                break
            n = min(2 * n, most)
        else:
            bad = n
    while bad is not None and bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if await meets(middle) else (good, middle)
    return good, [samples[k] for k in sorted(samples)]


@dataclass
class Links:
    """One emulated link (a LinkRelay) and one gRPC channel per session, all to one cloud."""

    address: tuple[str, int]
    rtt_ms: float
    relays: list = field(default_factory=list)
    channels: list = field(default_factory=list)

    async def open(self, count: int) -> list[pb_grpc.TandemStub]:
        from bench.relay import LinkConfig, LinkRelay

        while len(self.relays) < count:
            relay = LinkRelay(self.address, LinkConfig(one_way_delay_s=self.rtt_ms / 2000))
            await relay.start()
            self.relays.append(relay)
            self.channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}"))
        return [pb_grpc.TandemStub(c) for c in self.channels[:count]]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        for relay in self.relays:
            await relay.stop()
        self.relays, self.channels = [], []


async def measure_sessions(load: Load, links: Links, mode: str, sessions: int, timeout_s: float = 600) -> Sample:
    """`sessions` concurrent answers of `mode` (prompts round-robin), each over its own link."""
    stubs = await links.open(sessions)
    count = len(load.prompts)

    async def one(i: int):
        mine = dataclasses.replace(load, stub=stubs[i])
        session = hybrid_session(mine, i % count, seed=i) if mode == "hybrid" else cloud_session(mine, i % count)
        return await asyncio.wait_for(session, timeout_s)

    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(sessions)), return_exceptions=True)
    wall = time.monotonic() - started
    records = [r for r in results if not isinstance(r, BaseException)]
    failures = [r for r in results if isinstance(r, BaseException)]
    errors = sorted({type(r).__name__ + (f" {r.code().name}" if isinstance(r, grpc.RpcError) else "")
                     for r in failures})
    # Refused at the door with a retry hint (RESOURCE_EXHAUSTED + grpc-retry-pushback-ms): not a stall.
    refused = [retry_pushback_s(r) for r in failures
               if isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
    rates = [(len(r.token_ids) - 1) / (r.ended_s - r.first_token_s) for r in records
             if len(r.token_ids) > 1 and r.ended_s > r.first_token_s]
    compared = [compare(r.token_ids, load.references[r.prompt]) for r in records]
    extra = {"aggregate": round(sum(len(r.token_ids) for r in records) / wall, 2), "wall_s": round(wall, 2),
             "identical_to_alone": sum(c["first_difference"] is None for c in compared),
             "identical_token_share": round(sum(c["same"] for c in compared)
                                            / max(1, sum(c["length"] for c in compared)), 4)}
    if errors:
        extra["errors"] = errors
        extra["refused"] = len(refused)
        extra["refused_with_retry_hint"] = sum(hint is not None for hint in refused)
    if mode == "hybrid":
        drafted = sum(r.drafted for r in records)
        extra["acceptance"] = round(sum(r.accepted for r in records) / drafted, 3) if drafted else 0.0
    return Sample(sessions, rates, [r.first_token_s - r.started_s for r in records],
                  failed=len(results) - len(records), extra=extra)


def rss_mib(pid: int) -> float | None:
    """A process's resident memory (VmRSS), MiB; None where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


async def capacities(load: Load, address: tuple[str, int], level: ServiceLevel, rtts_ms: list[float],
                     modes: list[str], most: int, progress: Callable[[str], None],
                     cloud_rss: Callable[[], float | None] = lambda: None, overload_rtts: tuple = (20.0,)
                     ) -> list[dict]:
    """find_capacity for every RTT and mode against one running cloud: one result row each. At the
    RTTs in overload_rtts, twice the capacity runs once more (nothing may stall; the cloud's memory
    is read before and after)."""
    rows = []
    for rtt in rtts_ms:
        for mode in modes:
            links = Links(address, rtt)

            def report(sample: Sample, met: bool, mode=mode, rtt=rtt) -> None:
                progress(f"{mode:<6} rtt {rtt:>3g} ms  {sample.sessions:>4} sessions: p10 "
                         f"{sample.p10_tokens_per_s:6.1f} tok/s, p90 TTFT {sample.p90_ttft_s:5.2f} s, "
                         f"{sample.failed} failed -> {'meets' if met else 'FAILS'} the service level")

            row = {"mode": mode, "rtt_ms": rtt}
            try:
                rss_before = cloud_rss()
                capacity, samples = await find_capacity(lambda n: measure_sessions(load, links, mode, n),
                                                        level, most, report)
                row |= {"capacity": capacity, "samples": [s.to_json(level) for s in samples]}
                if capacity and rtt in overload_rtts:
                    progress(f"{mode:<6} rtt {rtt:>3g} ms  overload: {2 * capacity} sessions (2x capacity)...")
                    overload = await measure_sessions(load, links, mode, 2 * capacity)
                    row["overload"] = overload.to_json(level) | {
                        "cloud_rss_mib_before_ramp": rss_before, "cloud_rss_mib_after": cloud_rss(),
                        "slowest_session_tokens_per_s": round(min(overload.tokens_per_s, default=0.0), 2),
                        "longest_ttft_s": round(max(overload.ttft_s, default=0.0), 2)}
                    report(overload, level.met(overload))
            finally:
                await links.close()
            rows.append(row)
    return rows


def capacity_ratios(results: dict[str, list[dict]]) -> list[dict]:
    """The issue's Targets table from {dtype: rows} (None where the run lacks what a figure needs)."""
    cap = {(d, r["mode"], r["rtt_ms"]): r["capacity"] for d, rows in results.items() for r in rows}
    dtypes = list(results)
    best = {(m, rtt): max((cap.get((d, m, rtt)) or 0 for d in dtypes), default=0)
            for (_, m, rtt) in cap}
    out = []

    def ratio(a, b):
        return round(a / b, 2) if a is not None and b else None

    for rtt in sorted({rtt for (_, _, rtt) in cap}):
        out.append({"figure": f"hybrid capacity / cloud-only capacity, best dtype each, {rtt:g} ms RTT",
                    "measured": ratio(best.get(("hybrid", rtt)), best.get(("cloud", rtt))),
                    "target": ">= 3" if rtt == 20 else "reported"})
    if "float32" in dtypes and "bfloat16" in dtypes:
        for mode, bound in (("cloud", 1.3), ("hybrid", 2)):
            for rtt in sorted({rtt for (_, m, rtt) in cap if m == mode}):
                out.append({"figure": f"{mode} capacity at bf16 / fp32, {rtt:g} ms RTT",
                            "measured": ratio(cap.get(("bfloat16", mode, rtt)), cap.get(("float32", mode, rtt))),
                            "target": f">= {bound:g}"})
    return out


async def setup_load(args, address: str, modes: list[str]) -> tuple[Load, dict]:
    """The prompts, each one's output alone (every output is compared with it) and, for hybrid, the load
    drafter's continuations, as bench/load.py prepares them; the setup's channel is the caller's to close."""
    from bench.load import drafter_references, references, tokenized_prompts
    from common.pb.tandem.v1 import tandem_pb2 as pb

    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.TandemStub(channel)
    info = await stub.Info(pb.InfoRequest())
    prompts, _ = tokenized_prompts(args.draft_model, info, args.prompts, 0)
    refs = await references(stub, prompts, args.max_tokens)
    load = Load(stub, prompts, refs, args.max_tokens, args.load_draft_tokens, 0.0, info.vocab_size,
                info.tokenizer_fingerprint)
    rounds = await drafter_references(load) if "hybrid" in modes else []
    return load, {"channel": channel, "prompt_tokens": [len(p) for p in prompts], "drafter_rounds": rounds}


async def check_real_drafters(args, load: Load, address, level: ServiceLevel, rows: list[dict], out: Path,
                              progress: Callable[[str], None]) -> dict | None:
    """bench/capacity_drafters.py at the hybrid capacity of 20 ms RTT (else the first RTT measured)."""
    from bench.capacity_drafters import real_drafters_check

    hybrid = [r for r in rows if r["mode"] == "hybrid" and r.get("capacity")]
    if not args.real_drafters or not hybrid:
        return None
    row = next((r for r in hybrid if r["rtt_ms"] == 20), hybrid[0])
    progress(f"hybrid rtt {row['rtt_ms']:>3g} ms  {min(args.real_drafters, row['capacity'])} real llama.cpp "
             f"drafters among {row['capacity']} sessions...")
    edge_args = ["--draft-model", args.draft_model] if args.draft_model else []
    result = await real_drafters_check(load, address, row["rtt_ms"], row["capacity"], args.real_drafters, level,
                                       args.edge_cpus, edge_args, out)
    progress(f"real drafters: {result['real_tokens_per_s']} tok/s, TTFT {result['real_ttft_s']} s, "
             f"{result['real_identical_to_alone']}/{result['real_drafters']} identical to alone -> "
             f"{'meet' if result['met'] else 'FAIL'} the service level")
    return result


def run(args) -> int:
    """The capacity benchmark (bench/cli.py hands over when --capacity is given)."""
    from bench.capacity_report import plot, table
    from bench.pin import disjoint_cpus
    from bench.processes import CloudProcess, ProcessError
    from bench.stamp import code_version, header, provenance

    version = code_version()
    cloud_cpus, edge_cpus = disjoint_cpus(args.cloud_cpus, args.edge_cpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    level = ServiceLevel(args.min_session_tokens_per_s, args.max_ttft_s)
    rtts = [float(x) for x in args.capacity_rtt_ms.split(",") if x.strip()]
    modes = [m for m in ("cloud", "hybrid") if m in args.modes.split(",")]
    dtypes = [d for d in (args.capacity_dtypes or args.dtype or "auto").split(",") if d]
    load_start, started = os.getloadavg(), time.monotonic()

    def progress(line: str) -> None:
        print(f"capacity  {line}  elapsed {time.monotonic() - started:5.0f}s", file=sys.stderr, flush=True)

    progress(f"cloud on CPUs {args.cloud_cpus}, sessions from CPUs {args.edge_cpus}; dtypes {dtypes}, RTTs {rtts} ms, "
             f"modes {modes}; service level p10 >= {level.min_p10_tokens_per_s:g} tok/s, p90 TTFT <= "
             f"{level.max_p90_ttft_s:g} s; load average {load_start[0]:.2f}")
    results, clouds = {}, {}
    os.sched_setaffinity(0, edge_cpus)
    for dtype in dtypes:
        extra = ["--max-sessions", str(args.most_sessions + 8), "--max-batch-tokens", str(args.max_batch_tokens),
                 "--batch-wait-ms", f"{args.batch_wait_ms:g}", "--dtype", dtype, "--idle-timeout", "0",
                 "--goodput-shaping" if args.capacity_goodput_shaping else "--no-goodput-shaping"]
        try:
            cloud = CloudProcess(args.cloud_cpus, args.model, out / f"cloud-capacity-{dtype}.log", extra_args=extra)
        except ProcessError as exc:
            print(f"tandem bench: error: {exc}", file=sys.stderr)
            return 2
        try:
            async def bench(address=cloud.address):
                load, setup = await setup_load(args, f"{address[0]}:{address[1]}", modes)
                try:
                    load.corrupt_rate = 1.0 - args.acceptance
                    rows = await capacities(load, address, level, rtts, modes, args.most_sessions, progress,
                                            lambda: rss_mib(cloud.popen.pid))
                    setup["real_drafters"] = await check_real_drafters(args, load, address, level, rows, out, progress)
                    return rows, setup
                finally:
                    await setup["channel"].close()

            rows, setup = asyncio.run(bench())
            results[cloud.dtype or dtype] = rows
            clouds[cloud.dtype or dtype] = {"requested": dtype, "torch_threads": cloud.torch_threads,
                                            "cpus": cloud.cpus, "prompt_tokens": setup["prompt_tokens"],
                                            "real_drafters": setup["real_drafters"]}
        finally:
            cloud.stop()
    stamp = provenance(version, ",".join(results), next(iter(clouds.values()))["torch_threads"], None, load_start)
    report = {"command": "tandem " + " ".join(sys.argv[1:]), "provenance": stamp,
              "service_level": dataclasses.asdict(level),
              "settings": {"rtt_ms": rtts, "modes": modes, "dtypes": dtypes, "acceptance": args.acceptance,
                           "draft_tokens": args.load_draft_tokens, "max_tokens": args.max_tokens,
                           "prompts": args.prompts, "max_batch_tokens": args.max_batch_tokens,
                           "batch_wait_ms": args.batch_wait_ms, "most_sessions": args.most_sessions,
                           "goodput_shaping": args.capacity_goodput_shaping},
              "clouds": clouds, "capacity": results, "targets": capacity_ratios(results),
              "machine": {"cpu_count": os.cpu_count(), "client_cpus": sorted(edge_cpus),
                          "load_average_start": load_start, "load_average_end": stamp["load_average_end"],
                          "wall_s": round(time.monotonic() - started, 1)}}
    (out / "capacity.json").write_text(json.dumps(report, indent=1))
    print(header("tandem bench (capacity)", stamp))
    print(table(report))
    try:
        path = plot(report, out / "capacity.png")
    except ImportError:
        print("tandem bench: matplotlib is missing (pip install 'tandem[bench]'): no plot written", file=sys.stderr)
        return 1
    print(f"\nwrote {out / 'capacity.json'}, {path}; load average {load_start[0]:.2f} at start, "
          f"{stamp['load_average_end'][0]:.2f} at the end")
    return 0
