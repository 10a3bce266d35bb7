"""`tandem bench --sessions 1,4,16`: many concurrent sessions against one pinned `tandem cloud`.

    tandem bench --sessions 1,4,16 --modes cloud,hybrid --max-tokens 64 --out bench-results

The cloud runs alone on --cloud-cpus; the sessions are driven from this process (pinned to
--edge-cpus) over real gRPC. Hybrid load does not need N llama.cpp drafters: a *load drafter*
proposes the target's own greedy continuation (fetched once per prompt, cloud-only, alone),
each token corrupted with probability --corrupt-rate, so acceptance is realistic (about
1 - rate per token). The cloud cannot tell, and the output is still exactly the target's: the
bench checks every output against the prompt's output alone.

Reports per mode and session count: aggregate committed tokens/s and its ratio to one
session, per-session time between verdicts (p50, p99; cloud-only: between tokens), cloud
forward passes and sessions per pass (from the cloud's /metrics), and how many outputs were
identical to the same prompt run alone. With --long-prompt-tokens, the largest hybrid load
runs once more while a prompt that long joins, to show that a long prefill does not stall
the others. Writes load.json and load.png to --out.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.prompts import PROMPTS
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc


@dataclass
class SessionRecord:
    prompt: int
    token_ids: list[int] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)  # between consecutive verdicts (or tokens)
    drafted: int = 0
    accepted: int = 0
    drafted_on_reference: int = 0  # drafted while the output so far was the drafts' reference
    accepted_on_reference: int = 0
    forward_passes: int = 0
    started_s: float = 0.0
    first_token_s: float = 0.0  # when the first token arrived (bench/capacity.py: time to first token)
    ended_s: float = 0.0


@dataclass
class Load:
    stub: pb_grpc.TandemStub
    prompts: list[list[int]]
    references: list[list[int]]  # each prompt's cloud-only output alone: every output is compared with it
    max_tokens: int
    draft_tokens: int
    corrupt_rate: float
    vocab_size: int
    fingerprint: str
    drafts: list[list[int]] = field(default_factory=list)  # the load drafter's continuations (drafter_references)
    cloud_cpu_seconds: Callable[[], float] = lambda: 0.0  # CPU time the cloud process has used so far
    answers_per_session: int = 1  # answers each concurrent slot gives, one after another
    verdicts: int = 0  # verdicts received so far, all sessions

    def __post_init__(self):
        self.drafts = self.drafts or [list(r) for r in self.references]


async def _answer(call) -> pb.SpeculateResponse:
    """The next response that is not a progress message (the cloud saying it is at work)."""
    while (response := await call.read()).HasField("progress"):
        pass
    return response


async def cloud_session(load: Load, prompt: int) -> SessionRecord:
    record = SessionRecord(prompt, started_s=time.monotonic())
    request = pb.GenerateRequest(prompt_token_ids=load.prompts[prompt], max_new_tokens=load.max_tokens,
                                 sampling=pb.SamplingParams(temperature=0.0))
    last = record.started_s
    async for response in load.stub.Generate(request):
        now = time.monotonic()
        if response.HasField("token_id"):
            record.first_token_s = record.first_token_s or now
            record.token_ids.append(response.token_id)
            record.gaps_s.append(now - last)
            last = now
        if response.finish_reason:
            record.forward_passes = response.forward_passes
    record.ended_s = time.monotonic()
    record.gaps_s = record.gaps_s[1:]  # the first is the time to first token
    return record


async def hybrid_session(load: Load, prompt: int, seed: int) -> SessionRecord:
    """Lock-step speculation with the load drafter: blocks of draft_tokens, verdict, repeat."""
    record = SessionRecord(prompt, started_s=time.monotonic())
    prompt_ids, reference = load.prompts[prompt], load.drafts[prompt]
    rng = random.Random(seed)
    call = load.stub.Speculate()
    await call.write(pb.SpeculateRequest(open=pb.SessionOpen(
        prompt_token_ids=prompt_ids, max_new_tokens=load.max_tokens, sampling=pb.SamplingParams(temperature=0.0),
        tokenizer_fingerprint=load.fingerprint, draft_model_name="load-drafter")))
    started = (await _answer(call)).started
    tokens = [started.token_id] if started.HasField("token_id") else []
    finished = started.finish_reason
    last = record.first_token_s = time.monotonic()
    cap = load.draft_tokens  # the cloud's goodput cap (Verdict.max_drafts) holds blocks shorter under load
    while not finished:
        drafts = []  # the cloud verifies at most max_tokens - len(tokens) - 1 drafts: propose no more
        end = min(len(tokens) + cap, len(reference), load.max_tokens - 1)
        # Once the output has left the reference (a flipped argmax at bfloat16), every draft
        # after it continues a text the target is no longer writing: counted apart.
        on_reference = tokens == reference[: len(tokens)]
        for i in range(len(tokens), end):
            right = reference[i]
            drafts.append(right if rng.random() >= load.corrupt_rate else (right + 1 + rng.randrange(100)) % load.vocab_size)
        await call.write(pb.SpeculateRequest(draft=pb.DraftBlock(
            start_position=len(prompt_ids) + len(tokens) - 1, token_ids=[tokens[-1], *drafts])))
        verdict = (await _answer(call)).verdict
        load.verdicts += 1
        cap = min(load.draft_tokens, verdict.max_drafts) if verdict.HasField("max_drafts") else load.draft_tokens
        now = time.monotonic()
        record.gaps_s.append(now - last)
        last = now
        tokens += drafts[: verdict.accepted_count]
        tokens += [verdict.next_token] if verdict.HasField("next_token") else []
        record.drafted += len(drafts)
        record.accepted += verdict.accepted_count
        if on_reference:
            record.drafted_on_reference += len(drafts)
            record.accepted_on_reference += verdict.accepted_count
        record.forward_passes = verdict.forward_passes
        finished = verdict.finish_reason
    await call.done_writing()
    record.token_ids = tokens
    record.ended_s = time.monotonic()
    return record


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


async def run_load(load: Load, mode: str, sessions: int, metrics_port: int, joiner: list[int] | None = None) -> dict:
    """`sessions` concurrent sessions of `mode` (prompts round-robin); one row of the report.

    Each of the `sessions` slots answers one prompt after another until sessions x
    load.answers_per_session answers are done, so `sessions` stay live until the last few
    answers; with 1 answer each, they all start together and the row ends with the slowest.
    """
    before, verdicts_before = scrape(metrics_port), load.verdicts
    cpu_before = time.process_time(), load.cloud_cpu_seconds()
    started = time.monotonic()
    count = len(load.prompts)  # a joiner appended below is not one of the slots' prompts
    answers = iter(range(sessions * load.answers_per_session))

    async def slot() -> list[SessionRecord]:
        return [await (hybrid_session(load, j % count, seed=j) if mode == "hybrid" else cloud_session(load, j % count))
                for j in answers]

    tasks = [asyncio.ensure_future(slot()) for _ in range(sessions)]
    joined = None
    if joiner is not None:
        while load.verdicts - verdicts_before < 2 * sessions:  # join once the others are running
            await asyncio.sleep(0.005)
        load.prompts.append(joiner)
        load.references.append([])
        joined = asyncio.ensure_future(cloud_session(load, len(load.prompts) - 1))
    records = [r for done in await asyncio.gather(*tasks) for r in done]
    wall = max(r.ended_s for r in records) - started
    join_record = await joined if joined is not None else None
    client_cpu, cloud_cpu = time.process_time() - cpu_before[0], load.cloud_cpu_seconds() - cpu_before[1]
    if joiner is not None:
        load.prompts.pop()
        load.references.pop()
    after = scrape(metrics_port)
    passes = after["tandem_forward_passes_total"] - before["tandem_forward_passes_total"]
    session_passes = after["tandem_batch_sessions_sum"] - before["tandem_batch_sessions_sum"]
    tokens = sum(len(r.token_ids) for r in records)
    gaps = [g for r in records for g in r.gaps_s]
    compared = [compare(r.token_ids, load.references[r.prompt]) for r in records]
    first = [c["first_difference"] for c in compared if c["first_difference"] is not None]
    row = {
        "mode": mode, "sessions": sessions, "answers": len(records), "tokens": tokens, "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "gap_p50_ms": round(1000 * percentile(gaps, 50), 1), "gap_p99_ms": round(1000 * percentile(gaps, 99), 1),
        "cloud_forward_passes": int(passes), "sessions_per_pass": round(session_passes / passes, 2) if passes else 0,
        "identical_to_alone": sum(c["first_difference"] is None for c in compared),
        # How far outputs stray from the same prompt's cloud-only output alone (at bfloat16 they
        # can, see compare()): the earliest differing position over the sessions (None: all
        # identical), and the share of the references' positions that hold the same token.
        "first_difference": min(first, default=None),
        "identical_token_share": round(sum(c["same"] for c in compared)
                                       / max(1, sum(c["length"] for c in compared)), 4),
        "first_differences": [c["first_difference"] for c in compared],
        # Busy share of each side's CPU over the row: the client near 1.0 means the one process
        # driving every session, not the cloud, set the pace.
        "client_cpu_share": round(client_cpu / wall, 2), "cloud_cpu_share": round(cloud_cpu / wall, 2),
        # Committed tokens per second of the cloud's CPU time: on a shared machine, where the cloud
        # gets only part of its core, an upper bound on what the row would give with the core to
        # itself (the cloud's waits for blocks are not in it).
        "tokens_per_cloud_cpu_s": round(tokens / cloud_cpu, 2) if cloud_cpu > 0 else None,
    }
    if mode == "hybrid":
        drafted = sum(r.drafted for r in records)
        row["acceptance"] = round(sum(r.accepted for r in records) / drafted, 3) if drafted else 0.0
        # The drafter's own acceptance: blocks drafted while the output was still its reference.
        on = sum(r.drafted_on_reference for r in records)
        row["acceptance_on_reference"] = round(sum(r.accepted_on_reference for r in records) / on, 3) if on else 0.0
        row["left_reference"] = sum(r.token_ids != load.drafts[r.prompt] for r in records)
    if join_record is not None:
        row["long_prompt_tokens"] = len(joiner)
        row["long_prompt_answer_s"] = round(join_record.ended_s - join_record.started_s, 2)
    row["outputs"] = [r.token_ids for r in records]
    row["prompts"] = [r.prompt for r in records]
    return row


def compare(output: list[int], reference: list[int]) -> dict:
    """Where `output` first differs from `reference` (None: identical) and how many positions agree.

    At bfloat16 a block of tokens verified in one pass and the same tokens decoded one at a
    time round differently, as do rows batched with other sessions, so an argmax can flip and
    the continuation then goes its own way; at float32 the outputs are identical.
    """
    length = max(len(output), len(reference))
    same = sum(a == b for a, b in zip(output, reference))
    first = next((i for i, (a, b) in enumerate(zip(output, reference)) if a != b), None)
    if first is None and len(output) != len(reference):
        first = min(len(output), len(reference))
    return {"first_difference": first, "same": same, "length": length}


async def references(stub, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Each prompt's greedy output, cloud-only and alone."""
    out = []
    for ids in prompts:
        request = pb.GenerateRequest(prompt_token_ids=ids, max_new_tokens=max_tokens,
                                     sampling=pb.SamplingParams(temperature=0.0))
        out.append([r.token_id async for r in stub.Generate(request) if r.HasField("token_id")])
    return out


async def drafter_references(load: Load, most_rounds: int = 4) -> list[int]:
    """Makes load.drafts what verification in blocks computes; returns the rounds each prompt took.

    The cloud-only output decodes one token at a time. At bfloat16, verifying a block rounds
    differently, so once an argmax flips the hybrid answer continues elsewhere and every draft
    taken from the cloud-only output is rejected: acceptance would collapse for a numerical
    reason, not the drafter's. So each prompt runs alone as a hybrid session with no corruption;
    its output (the verifier's own tokens) becomes the drafts, until the drafts are all accepted
    (a round whose output equals its drafts) or most_rounds. At float32 the first round agrees.
    """
    rate, load.corrupt_rate = load.corrupt_rate, 0.0
    rounds = []
    try:
        for prompt in range(len(load.prompts)):
            for n in range(1, most_rounds + 1):
                output = (await hybrid_session(load, prompt, seed=0)).token_ids
                if output == load.drafts[prompt]:
                    break
                load.drafts[prompt] = output
            rounds.append(n)
    finally:
        load.corrupt_rate = rate
    return rounds


def tokenized_prompts(draft_model: str | None, info: pb.InfoResponse, count: int, long_tokens: int):
    """The bench prompts as chat turns, encoded as the target wants (its template and BOS rule),
    and one synthetic prompt of long_tokens tokens."""
    from common.model_paths import default_gguf_path
    from common.wire import special_tokens_from_pb
    from edge.chat_template import render_chat
    from edge.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(Path(draft_model) if draft_model else default_gguf_path())
    rules = special_tokens_from_pb(info.special_tokens)
    texts = [render_chat(info.chat_template, [{"role": "user", "content": p}], bos_token=rules.bos_token,
                         eos_token=rules.eos_token) for p in PROMPTS[:count]]
    filler = tokenizer.tokenize(" ".join(PROMPTS))
    long = (filler * (long_tokens // max(1, len(filler)) + 1))[:long_tokens] if long_tokens else []
    return [tokenizer.encode_rendered_chat(text, rules) for text in texts], long


async def _bench(args, address: str, metrics_port: int, progress, cloud_cpu_seconds) -> dict:
    channel = grpc.aio.insecure_channel(address)
    try:
        stub = pb_grpc.TandemStub(channel)
        info = await stub.Info(pb.InfoRequest())
        prompts, long = tokenized_prompts(args.draft_model, info, args.prompts, args.long_prompt_tokens)
        refs = await references(stub, prompts, args.max_tokens)
        load = Load(stub, prompts, refs, args.max_tokens, args.load_draft_tokens, args.corrupt_rate,
                    info.vocab_size, info.tokenizer_fingerprint, cloud_cpu_seconds=cloud_cpu_seconds,
                    answers_per_session=args.answers_per_session)
        drafter_rounds = await drafter_references(load) if "hybrid" in args.load_modes else []
        rows = []
        for mode in args.load_modes:
            for n in args.session_counts:
                progress(f"{mode} x {n}")
                rows.append(await run_load(load, mode, n, metrics_port))
                progress(f"{mode} x {n}", rows[-1])
        if long and "hybrid" in args.load_modes:
            n = max(1, max(args.session_counts) - 1)
            for joiner in (None, long):
                label = f"hybrid x {n}" + (f" + {len(long)}-token prompt" if joiner else " (no joiner)")
                progress(label)
                rows.append(await run_load(load, "hybrid", n, metrics_port, joiner) | {"join_run": True})
                progress(label, rows[-1])
        drafter = {"rounds": drafter_rounds, "differs_from_cloud_only": [
            compare(d, r)["first_difference"] for d, r in zip(load.drafts, refs)]}
        return {"rows": rows, "references": refs, "prompt_tokens": [len(p) for p in prompts],
                "drafter_reference": drafter}
    finally:
        await channel.close()


def ratios(rows: list[dict]) -> list[dict]:
    """The issue's target ratios from the rows (None where the run lacks what one needs)."""
    plain = [r for r in rows if not r.get("join_run")]
    by = {(r["mode"], r["sessions"]): r for r in plain}
    most = max((r["sessions"] for r in plain), default=0)
    out = []

    def add(figure, value, bound, at_most=False):
        ok = None if value is None else (value <= bound if at_most else value >= bound)
        out.append({"figure": figure, "measured": None if value is None else round(value, 2),
                    "target": f"{'<=' if at_most else '>='} {bound:g}", "met": ok})

    def per_one(mode):
        one, many = by.get((mode, 1)), by.get((mode, most))
        # A tiny model's row can take less than a CPU tick: no tokens per cloud CPU second, no ratio.
        if not (one and many and most > 1 and one["tokens_per_s"]):
            return None
        return many["tokens_per_s"] / one["tokens_per_s"]

    add(f"cloud-only aggregate tokens/s, {most} sessions / 1 session", per_one("cloud"), 4)
    add(f"hybrid aggregate committed tokens/s, {most} sessions / 1 session", per_one("hybrid"), 2.5)
    h, c = by.get(("hybrid", most)), by.get(("cloud", most))
    add(f"hybrid / cloud-only aggregate tokens/s at {most} sessions",
        h["tokens_per_s"] / c["tokens_per_s"] if h and c and c["tokens_per_s"] else None, 1.5)
    joins = [r for r in rows if r.get("join_run")]
    if len(joins) == 2:
        add(f"p99 time between verdicts of {joins[0]['sessions']} sessions while a "
            f"{joins[1]['long_prompt_tokens']}-token prompt joins / without it",
            joins[1]["gap_p99_ms"] / joins[0]["gap_p99_ms"] if joins[0]["gap_p99_ms"] else None, 2, at_most=True)
    return out


def table(rows: list[dict], targets: list[dict]) -> str:
    head = (f"{'mode':<7} {'sessions':>8} {'tokens/s':>9} {'x one':>6} {'gap p50':>8} {'gap p99':>8} "
            f"{'passes':>7} {'sess/pass':>9} {'accept':>6} {'on ref':>6} {'same':>7} {'1st diff':>8} "
            f"{'tok same':>8} {'cloud cpu':>9} {'tok/cpu-s':>9}")
    lines = [head, "-" * len(head)]
    one = {r["mode"]: r["tokens_per_s"] for r in rows if r["sessions"] == 1 and not r.get("join_run")}
    for r in rows:
        label = r["mode"] + ("+join" if r.get("long_prompt_tokens") else "")
        ratio = r["tokens_per_s"] / one[r["mode"]] if one.get(r["mode"]) else float("nan")
        lines.append(f"{label:<7} {r['sessions']:>8} {r['tokens_per_s']:>9.1f} {ratio:>6.2f} "
                     f"{r['gap_p50_ms']:>6.0f}ms {r['gap_p99_ms']:>6.0f}ms {r['cloud_forward_passes']:>7} "
                     f"{r['sessions_per_pass']:>9.2f} {r.get('acceptance', float('nan')):>6.2f} "
                     f"{r.get('acceptance_on_reference', float('nan')):>6.2f} "
                     f"{r['identical_to_alone']:>3}/{r.get('answers', r['sessions']):<3} "
                     f"{'-' if r.get('first_difference') is None else r['first_difference']:>8} "
                     f"{r.get('identical_token_share', float('nan')):>8.1%} "
                     f"{r.get('cloud_cpu_share', float('nan')):>9.2f} "
                     f"{r.get('tokens_per_cloud_cpu_s') or float('nan'):>9.1f}")
    lines.append("same: outputs identical to the prompt's cloud-only output alone; 1st diff: the earliest "
                 "position where one differs (-: none); tok same: share of positions with the same token;\n"
                 "on ref: acceptance over the blocks drafted while the output was still the load drafter's reference; "
                 "cloud cpu: the cloud's busy share of its CPU over the row; tok/cpu-s: tokens per second of "
                 "the cloud's CPU time (an upper bound on what the row would give with the core to itself)")
    lines.append("\ntargets:")
    for t in targets:
        state = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        lines.append(f"  {t['figure']}: {t['measured']} (target {t['target']}) {state}")
    on_cpu = ratios([r | {"tokens_per_s": r.get("tokens_per_cloud_cpu_s") or 0.0} for r in rows])
    lines.append("the same ratios on the cloud's CPU time (tok/cpu-s: less sensitive than wall time to a shared "
                 "machine's load):")
    lines += [f"  {t['figure']}: {t['measured']}" for t in on_cpu if "p99" not in t["figure"]]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for mode, marker in (("hybrid", "o"), ("cloud", "^")):
        mine = sorted((r for r in rows if r["mode"] == mode and not r.get("join_run")), key=lambda r: r["sessions"])
        if mine:
            xs = [r["sessions"] for r in mine]
            left.plot(xs, [r["tokens_per_s"] for r in mine], marker=marker, label=mode)
            right.plot(xs, [r["gap_p99_ms"] for r in mine], marker=marker, label=mode)
    left.set(xlabel="concurrent sessions", ylabel="committed tokens / s (all sessions)", title="Aggregate throughput")
    right.set(xlabel="concurrent sessions", ylabel="ms", title="p99 time between verdicts (cloud: tokens)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(args) -> int:
    """The load benchmark (bench/cli.py hands over when --sessions is given)."""
    from bench.pin import disjoint_cpus
    from bench.processes import CloudProcess, ProcessError
    from bench.stamp import code_version, header, provenance

    version = code_version()  # the code that runs, before anything can change the tree
    cloud_cpus, edge_cpus = disjoint_cpus(args.cloud_cpus, args.edge_cpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.monotonic()
    print(f"tandem bench (load): cloud on CPUs {args.cloud_cpus}, sessions driven from CPUs {args.edge_cpus}; "
          f"sessions {args.session_counts}, modes {args.load_modes}, {args.max_tokens} tokens each; "
          f"load average {load_start[0]:.2f}", file=sys.stderr, flush=True)

    def progress(label: str, row: dict | None = None) -> None:
        elapsed = time.monotonic() - started
        if row is None:
            print(f"load  {label:<40} running...  elapsed {elapsed:5.0f}s", file=sys.stderr, flush=True)
        else:
            print(f"load  {label:<40} {row['tokens_per_s']:7.1f} tokens/s, p99 {row['gap_p99_ms']:.0f} ms, "
                  f"{row['sessions_per_pass']:.1f} sessions/pass  elapsed {elapsed:5.0f}s", file=sys.stderr, flush=True)

    metrics_port = _free_port()
    extra = ["--max-sessions", str(max(args.session_counts) + 8), "--max-batch-tokens", str(args.max_batch_tokens),
             "--batch-wait-ms", f"{args.batch_wait_ms:g}", "--metrics-port", str(metrics_port)]
    if args.dtype:
        extra += ["--dtype", args.dtype]
    try:
        cloud = CloudProcess(args.cloud_cpus, args.model, out / "cloud-load.log", extra_args=extra)
    except ProcessError as exc:
        print(f"tandem bench: error: {exc}", file=sys.stderr)
        return 2
    try:
        os.sched_setaffinity(0, edge_cpus)
        result = asyncio.run(_bench(args, f"{cloud.address[0]}:{cloud.address[1]}", metrics_port, progress,
                                     cloud.cpu_seconds))
        cloud_cpus_seen, torch_threads, dtype = cloud.cpus, cloud.torch_threads, cloud.dtype
    finally:
        cloud.stop()
    targets = ratios(result["rows"])
    stamp = provenance(version, dtype, torch_threads, None, load_start)
    report = {
        "command": "tandem " + " ".join(sys.argv[1:]),
        "provenance": stamp,
        "settings": {"sessions": args.session_counts, "modes": args.load_modes, "max_tokens": args.max_tokens,
                     "draft_tokens": args.load_draft_tokens, "corrupt_rate": args.corrupt_rate,
                     "max_batch_tokens": args.max_batch_tokens, "batch_wait_ms": args.batch_wait_ms,
                     "long_prompt_tokens": args.long_prompt_tokens, "answers_per_session": args.answers_per_session,
                     "model": args.model, "dtype": args.dtype or "fp32", "cloud_dtype": dtype},
        "machine": {"cpu_count": os.cpu_count(), "cloud_cpus": cloud_cpus_seen, "cloud_torch_threads": torch_threads,
                    "client_cpus": sorted(edge_cpus), "load_average_start": load_start,
                    "load_average_end": stamp["load_average_end"], "wall_s": round(time.monotonic() - started, 1)},
        "targets": targets,
        **result,
    }
    (out / "load.json").write_text(json.dumps(report, indent=1))
    print(header("tandem bench (load)", stamp))
    print(table(result["rows"], targets))
    drafter = result["drafter_reference"]
    if drafter["rounds"]:
        moved = [d for d in drafter["differs_from_cloud_only"] if d is not None]
        print(f"load drafter: drafts are each prompt's hybrid output alone (verified in blocks; rounds to agree "
              f"{drafter['rounds']}); {len(moved)} of {len(drafter['rounds'])} differ from the cloud-only output"
              + (f", first at positions {moved}" if moved else ""))
    try:
        path = plot(result["rows"], out / "load.png")
    except ImportError:
        print("tandem bench: matplotlib is missing (pip install 'tandem[bench]'): no plot written", file=sys.stderr)
        return 1
    print(f"\nwrote {out / 'load.json'}, {path} in {report['machine']['wall_s']:.0f}s; load average "
          f"{load_start[0]:.2f} at start, {report['machine']['load_average_end'][0]:.2f} at the end")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
