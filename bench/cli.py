"""`tandem bench`: hybrid vs cloud-only vs edge-only over emulated links, as two pinned processes.

    tandem bench --rtt-ms 0,20,50,100 --max-tokens 128 --prompts 4 --out bench-results

Writes a table to the terminal, bench.json and two PNG plots to --out.

With --sessions it is the load benchmark instead (bench/load.py): many concurrent sessions
against one pinned cloud, in cloud-only and hybrid mode; writes load.json and load.png.
With --json-schemas it measures acceptance under a grammar (bench/schema_rounds.py): the ten
schemas' answers with the draft masked and unmasked; writes schemas.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench.config import CAPACITY, LOAD, BenchConfig, CapacityConfig, LoadConfig
from bench.pin import disjoint_cpus
from bench.prompts import PROMPTS, RAW_PROMPTS
from bench.stamp import code_version, header, provenance
from common.checks import check_model_path
from common.errors import InvalidArgument
from common import settings
from common.extras import require_extra
from edge.config import speculation_flags, speculation_from_args
from edge.speculation_config import SpeculationConfig


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark hybrid, cloud-only and edge-only generation over emulated links",
        description="Start `tandem cloud` and an edge process pinned to disjoint CPUs (two machines, "
                    "emulated), connect them through a TCP relay that delays and counts every byte, and "
                    "time greedy generations of every mode over the same prompts at every round-trip time. "
                    "Prints a table; writes bench.json, tokens_per_s.png and tokens_per_round.png to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    settings.add_arguments(parser, BenchConfig)
    settings.add_arguments(parser, SpeculationConfig)
    settings.add_arguments(parser, LoadConfig, title=LOAD)
    settings.add_arguments(parser, CapacityConfig, title=CAPACITY)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bench.processes import ProcessError

    if args.capacity:
        from bench import capacity

        _check_capacity(args)
        return capacity.run(args)
    if args.sessions:
        from bench import load

        _load_plan(args)
        return load.run(args)
    try:
        if args.json_schemas:
            from bench import schema_rounds

            return schema_rounds.run(args, _plan(args), edge_flags(args))
        return _run(args)
    except ProcessError as exc:
        print(f"tandem bench: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    for extra in ("cloud", "edge"):
        require_extra(extra, "tandem bench")
    from bench import report, resume, runner
    from bench.h2frames import FrameTally
    from bench.processes import CloudProcess, EdgeWorker
    from bench.relay import RelayThread

    plan = _plan(args)
    lengths = _ttft_lengths(args)
    cloud_cpus, edge_cpus = disjoint_cpus(args.cloud_cpus, args.edge_cpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    edge_args = edge_flags(args)
    load_start, version = os.getloadavg(), code_version()
    runs = (f"{2 * len(lengths) * args.ttft_repeats * len(plan.rtts_ms)} generations measuring time to first "
            f"token" if lengths else f"{plan.total_runs} generations of {plan.max_tokens} tokens")
    print(f"tandem bench: cloud on CPUs {args.cloud_cpus}, edge on CPUs {args.edge_cpus}; {runs}; "
          f"load average {load_start[0]:.2f}", file=sys.stderr, flush=True)
    cloud = worker = relay = None
    started = time.monotonic()
    try:
        cloud = CloudProcess(args.cloud_cpus, args.model, out / "cloud.log")
        frames = FrameTally()
        relay = RelayThread(cloud.address, tap=frames).start()
        worker = EdgeWorker(args.edge_cpus, f"127.0.0.1:{relay.port}", edge_args, out / "edge.log")
        runner.warm_up(worker, plan)
        resume_records = []
        if lengths:
            progress = runner.Progress(2 * len(lengths) * args.ttft_repeats * len(plan.rtts_ms))
            records = runner.run_ttft(lengths, args.ttft_repeats, plan.rtts_ms, plan, worker, relay, progress)
        else:
            records = runner.run(plan, worker, relay, frames, runner.Progress(plan.total_runs))
        if args.resume_after > 0 and not lengths:
            print(f"tandem bench: measuring one resume at {args.resume_rtt_ms:g} ms RTT ...", file=sys.stderr, flush=True)
            resume_records = resume.measure(worker, relay, plan.link(args.resume_rtt_ms), plan.prompts,
                                            plan.max_tokens, args.resume_after)
        machine = machine_facts(cloud, worker, load_start, started)
        stamp = provenance(version, cloud.dtype, cloud.torch_threads, worker.info["draft_threads"], load_start)
    finally:
        for part in (worker, relay, cloud):
            if part is not None:
                part.stop()
    if lengths:
        return _report_ttft(args, records, machine, load_start, stamp)
    summary = report.summarize(records)
    target_rows = report.targets(summary, records)
    result = {
        "command": "tandem " + " ".join(sys.argv[1:]),
        "provenance": stamp,
        "settings": {"rtt_ms": plan.rtts_ms, "max_tokens": plan.max_tokens, "prompts": plan.prompts,
                     "modes": plan.modes, "jitter_ms": plan.jitter_ms, "bandwidth_mbps": plan.bandwidth_mbps,
                     "edge_flags": edge_args, "model": args.model, "draft_model": args.draft_model,
                     "raw_prompts": args.raw_prompts, "temperature": args.temperature, "top_p": args.top_p,
                     "top_k": args.top_k, "seed": args.seed},
        "machine": machine,
        "summary": {f"{rtt:g}": modes for rtt, modes in summary.items()},
        "targets": target_rows,
        "runs": records,
    }
    if resume_records:
        result["resume"] = {"rtt_ms": args.resume_rtt_ms, "break_after": args.resume_after,
                            **resume.summarize(resume_records), "runs": resume_records}
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    print(header("tandem bench", stamp))
    print(report.table(summary, target_rows))
    if resume_records:
        print(resume.table(result["resume"], args.resume_rtt_ms, args.resume_after))
    try:
        paths = report.plot(summary, records, out)
    except ImportError:
        print("tandem bench: matplotlib is missing (pip install 'tandem[bench]'): no plots written", file=sys.stderr)
        return 1
    print(f"\nwrote {out / 'bench.json'}, {', '.join(str(p) for p in paths)} "
          f"in {machine['wall_s']:.0f}s; load average {load_start[0]:.2f} at start, "
          f"{machine['load_average_end'][0]:.2f} at the end")
    return 0


def edge_flags(args: argparse.Namespace) -> list[str]:
    """The edge worker's flags: speculation, models and how every generation decodes."""
    flags = speculation_flags(speculation_from_args(args))
    if args.draft_model:
        flags += ["--draft-model", args.draft_model]
    if args.model:  # a draft of another vocabulary reads the target's tokenizer from its files
        flags += ["--target-tokenizer", args.model]
    return flags + _generation_flags(args)


def machine_facts(cloud, worker, load_start: tuple[float, ...], started: float) -> dict:
    """The machine and the two processes a run measured on (call it before stopping them)."""
    return {
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "cloud_cpus": cloud.cpus, "edge_cpus": worker.cpus, "cloud_torch_threads": cloud.torch_threads,
        "edge_draft_threads": worker.info["draft_threads"],
        "draft_model": worker.info["draft_model"], "target_model": worker.info["target_model"],
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "wall_s": round(time.monotonic() - started, 1),
    }


def _report_ttft(args: argparse.Namespace, records: list[dict], machine: dict, load_start, stamp: dict) -> int:
    from bench import report

    rows = report.ttft_by_length(records)
    target_rows = report.ttft_targets(rows)
    out = Path(args.out) / "ttft.json"
    out.write_text(json.dumps({"command": "tandem " + " ".join(sys.argv[1:]), "provenance": stamp, "machine": machine,
                               "ttft_by_prompt_tokens": rows, "targets": target_rows, "runs": records}, indent=1))
    print(header("tandem bench (time to first token)", stamp))
    print(report.ttft_table(rows, target_rows))
    print(f"\nwrote {out} in {machine['wall_s']:.0f}s; load average {load_start[0]:.2f} at start, "
          f"{machine['load_average_end'][0]:.2f} at the end")
    return 0


def _ttft_lengths(args: argparse.Namespace) -> list[int]:
    if args.ttft_prompt_tokens is None:
        return []
    try:
        lengths = [int(x) for x in args.ttft_prompt_tokens.split(",") if x.strip()]
    except ValueError:
        raise InvalidArgument(f"--ttft-prompt-tokens expects token counts like 100,1000,3000, "
                              f"got {args.ttft_prompt_tokens!r}") from None
    if not lengths or any(n < 16 for n in lengths) or args.ttft_repeats < 1:
        raise InvalidArgument("--ttft-prompt-tokens needs lengths >= 16, and --ttft-repeats >= 1")
    return lengths


def _generation_flags(args: argparse.Namespace) -> list[str]:
    """bench.worker's flags for how every generation decodes."""
    flags = ["--temperature", str(args.temperature), "--top-p", str(args.top_p), "--top-k", str(args.top_k),
             "--seed", str(args.seed)]
    return flags + (["--raw-prompts"] if args.raw_prompts else [])


def _plan(args: argparse.Namespace):
    from bench.runner import Plan

    for path, flag in ((args.model, "--model"), (args.draft_model, "--draft-model")):
        if path is not None:
            check_model_path(path, flag)

    try:
        rtts = [float(x) for x in args.rtt_ms.split(",") if x.strip()]
    except ValueError:
        raise InvalidArgument(f"--rtt-ms expects numbers like 0,20,50,100, got {args.rtt_ms!r}") from None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not rtts or any(r < 0 for r in rtts):
        raise InvalidArgument("--rtt-ms needs at least one round-trip time >= 0")
    if not modes or set(modes) - {"hybrid", "cloud", "edge"}:
        raise InvalidArgument(f"--modes takes hybrid, cloud and edge, got {args.modes!r}")
    if not 1 <= args.prompts <= len(PROMPTS) or args.max_tokens < 1:
        raise InvalidArgument(f"--prompts must be in 1..{len(PROMPTS)} and --max-tokens >= 1")
    prompts = RAW_PROMPTS if args.raw_prompts else PROMPTS
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise InvalidArgument("--temperature must be >= 0, --top-p in (0, 1], --top-k >= 0")
    return Plan(rtts, prompts[: args.prompts], modes, args.max_tokens, args.jitter_ms, args.bandwidth_mbps)


def _check_capacity(args: argparse.Namespace) -> None:
    if not (args.min_session_tokens_per_s > 0 and args.max_ttft_s > 0 and 0 < args.acceptance <= 1
            and args.most_sessions >= 1 and args.load_draft_tokens >= 1):
        raise SystemExit("tandem bench: --min-session-tokens-per-s and --max-ttft-s must be > 0, --acceptance in "
                         "(0, 1], --most-sessions and --load-draft-tokens >= 1")
    try:
        [float(x) for x in args.capacity_rtt_ms.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"tandem bench: --capacity-rtt-ms expects times like 0,20,50, got {args.capacity_rtt_ms!r}")


def _load_plan(args: argparse.Namespace) -> None:
    """Checks the load benchmark's flags; sets args.session_counts and args.load_modes."""
    try:
        args.session_counts = sorted({int(x) for x in args.sessions.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"tandem bench: --sessions expects counts like 1,4,16, got {args.sessions!r}") from None
    args.load_modes = [m for m in ("cloud", "hybrid") if m in args.modes.split(",")]
    if not args.session_counts or args.session_counts[0] < 1:
        raise SystemExit("tandem bench: --sessions needs counts >= 1")
    if not args.load_modes:
        raise SystemExit("tandem bench: the load benchmark runs the cloud and hybrid modes; --modes has neither")
    if (not 0 <= args.corrupt_rate < 1 or args.load_draft_tokens < 1 or args.max_batch_tokens < 0
            or args.answers_per_session < 1):
        raise SystemExit("tandem bench: --corrupt-rate must be in [0, 1), --load-draft-tokens and "
                         "--answers-per-session >= 1, --max-batch-tokens >= 0 (0: the cloud's default)")
    if not 1 <= args.prompts <= len(PROMPTS) or args.max_tokens < 1:
        raise SystemExit(f"tandem bench: --prompts must be in 1..{len(PROMPTS)} and --max-tokens >= 1")

