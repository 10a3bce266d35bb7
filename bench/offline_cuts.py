"""Offline-first against waiting: the cloud cut for 2, 5 and 10 s in a 200-token answer at 20 ms RTT.

    python -m bench.offline_cuts [--cuts 2,5,10] [--rtt-ms 20] [--tokens 200] [--prompts 3]
                                 [--model DIR --draft-model GGUF]

Three runs per prompt and cut, one after the other through one link relay (bench/relay.py) to one
cloud: *uncut* (the reference answer and its time); *provisional* (offline "rewind": the local model
writes on while the cloud is away, verified when it returns: within the answer, or, when the
answer finished offline first, by AsyncTandemClient.verify as soon as the cloud is back); and
*waiting* (no local writing: the fallback timeout is longer than the cut, so the stream waits and
resumes on the healed link). The link goes silent once the answer has `--cut-at` tokens and heals
`cut` seconds later. Every answer must end with the uncut ids (exactness is checked, not assumed).

Reported: the share of provisional tokens the target accepted; the extra time to an exact answer
over the uncut run, provisional against waiting; and when the whole (provisional) answer was
there. Without --model the tiny models of the tests are built in a temporary directory (their
draft agrees ~60% of the time: a pessimistic acceptance); the load average is printed beside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.relay import LinkConfig, RelayThread

PROMPTS = ["Once upon a time, in a lighthouse by the sea,", "The history of the printing press begins",
           "def parse(text):\n    \"\"\"Parses", "Dear team, after the storm last night"]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def run_one(tandem, prompt_ids: list[int], tokens: int, relay: RelayThread | None, link: LinkConfig,
                  cut_at: int, cut_s: float) -> dict:
    """One answer; with `relay`, the link goes silent at `cut_at` tokens and heals `cut_s` later."""
    from edge.engine import Generation, Mode

    generation = Generation(Mode.HYBRID)
    loop = asyncio.get_running_loop()
    began, complete_at, cut, ids = time.perf_counter(), None, False, []
    healed_at = []

    def heal():
        relay.set_config(link)
        relay.drop_connections()
        healed_at.append(time.perf_counter())

    async for delta in tandem.deltas(prompt_ids, generation, offline="rewind", max_tokens=tokens):
        ids = ids[:delta.rewind_to] if delta.rewind_to is not None else ids + delta.token_ids
        if relay is not None and not cut and len(ids) >= cut_at:
            relay.set_config(LinkConfig(one_way_delay_s=600.0))  # silent: nothing errors, nothing arrives
            relay.drop_connections()
            loop.call_later(cut_s, lambda: loop.run_in_executor(None, heal))
            cut = True
    complete_at = time.perf_counter() - began
    stats = generation.stats
    record = {"complete_s": complete_at, "exact_s": complete_at, "provisional": stats.provisional,
              "accepted": stats.provisional_accepted, "rewritten": stats.provisional_rewritten,
              "ended_offline": generation.provisional_from is not None, "ids": list(generation.token_ids)}
    if generation.provisional_from is not None:  # finished offline: check it as soon as the cloud is back
        while not tandem.engine.cloud.up:
            await asyncio.sleep(0.01)
        seen_back = time.perf_counter()
        check = await tandem.verify(prompt_ids, generation.token_ids, max_tokens=tokens)
        # The check verifies the whole answer; of its provisional part, the tokens before the first
        # difference were the target's.
        start, written = generation.provisional_from, len(generation.token_ids)
        kept = max(0, (written if check.exact else check.differs_at) - start)
        record.update(exact_s=time.perf_counter() - began, ids=check.token_ids,
                      back_seen_s=seen_back - healed_at[0], check_s=time.perf_counter() - seen_back,
                      accepted=stats.provisional_accepted + kept,
                      rewritten=stats.provisional_rewritten + written - start - kept)
    return record


async def bench(args, model_dir: str, draft: str) -> list[dict]:
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from edge.config import EdgeConfig
    from edge.fallback import FallbackConfig
    from edge.sdk import AsyncTandemClient

    link = LinkConfig(one_way_delay_s=args.rtt_ms / 2000)
    records = []
    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, model=model_dir, threads=1)) as cloud:
        host, port = cloud.address.rsplit(":", 1)
        with RelayThread((host, int(port)), link) as relay:
            def edge(timeout_s: float) -> AsyncTandemClient:
                return AsyncTandemClient(config=EdgeConfig(
                    cloud=f"127.0.0.1:{relay.port}", draft_model=draft, threads=1, n_ctx=2048, connect_timeout_s=2.0,
                    fallback=FallbackConfig(timeout_s=timeout_s, retry_min_s=0.05, retry_max_s=0.2)))

            async with edge(args.fallback_timeout) as offline_first, edge(max(args.cuts) + 30) as waiting:
                for cut_s in args.cuts:
                    for prompt in PROMPTS[:args.prompts]:
                        prompt_ids = offline_first.encode(prompt)
                        uncut = await run_one(offline_first, prompt_ids, args.tokens, None, link, 0, 0)
                        first = await run_one(offline_first, prompt_ids, args.tokens, relay, link, args.cut_at, cut_s)
                        await asyncio.sleep(0.5)
                        wait = await run_one(waiting, prompt_ids, args.tokens, relay, link, args.cut_at, cut_s)
                        await asyncio.sleep(0.5)
                        for run in (first, wait):
                            assert run["ids"] == uncut["ids"], "an answer did not end with the uncut ids"
                        records.append({"cut_s": cut_s, "uncut_s": uncut["exact_s"], "provisional": first,
                                        "waiting": wait, "load": loadavg()})
    return records


def summarize(records: list[dict]) -> list[dict]:
    rows = []
    for cut_s in sorted({r["cut_s"] for r in records}):
        rs = [r for r in records if r["cut_s"] == cut_s]
        written = sum(r["provisional"]["provisional"] for r in rs)
        rows.append({
            "cut_s": cut_s, "answers": len(rs),
            "provisional_accepted_share": round(sum(r["provisional"]["accepted"] for r in rs) / written, 3)
            if written else None,
            "provisional_written_mean": round(written / len(rs), 1),
            "ended_offline": sum(r["provisional"]["ended_offline"] for r in rs),
            "extra_to_exact_s_provisional": round(statistics.fmean(r["provisional"]["exact_s"] - r["uncut_s"]
                                                                   for r in rs), 3),
            "extra_to_exact_s_waiting": round(statistics.fmean(r["waiting"]["exact_s"] - r["uncut_s"] for r in rs), 3),
            "whole_answer_s_provisional": round(statistics.fmean(r["provisional"]["complete_s"] for r in rs), 3),
            "uncut_s": round(statistics.fmean(r["uncut_s"] for r in rs), 3),
            "heal_to_cloud_seen_s": _mean(r["provisional"].get("back_seen_s") for r in rs),
            "check_s": _mean(r["provisional"].get("check_s") for r in rs),
        })
    return rows


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 3) if values else None


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", type=lambda s: [float(x) for x in s.split(",")], default=[2.0, 5.0, 10.0])
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--cut-at", type=int, default=60, help="tokens before the cut")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--fallback-timeout", type=float, default=0.5)
    parser.add_argument("--model", help="target model directory (default: the tests' tiny target, built now)")
    parser.add_argument("--draft-model", help="draft GGUF (default: the tests' noisy tiny draft)")
    parser.add_argument("--draft-noise", type=float, default=0.05,
                        help="without --draft-model: noise on the tiny draft's weights (0: the target's own weights)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model, draft = args.model, args.draft_model
        if model is None or draft is None:
            from bench.tiny_models import build_tiny_target, hf_to_gguf, smollm2_tokenizer_dir

            root = Path(tmp)
            model = str(build_tiny_target(root / "target", smollm2_tokenizer_dir(root), seed=0))
            draft = str(hf_to_gguf(Path(model), root / "draft.gguf", noise=args.draft_noise, noise_seed=1))
        before = loadavg()
        records = asyncio.run(bench(args, model, draft))
    rows = summarize(records)
    print(f"# python -m bench.offline_cuts --cuts {','.join(f'{c:g}' for c in args.cuts)} --rtt-ms {args.rtt_ms:g} "
          f"--tokens {args.tokens} --prompts {args.prompts}"
          + (f" --draft-noise {args.draft_noise:g}" if args.draft_model is None else "")
          + f"; load average before {before}, after {loadavg()}")
    print("| cut | provisional tokens (mean) | accepted by the target | ended offline | extra time to exact: "
          "provisional | waiting | whole answer there (provisional) | uncut answer | cloud back -> seen | check |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        share = "–" if r["provisional_accepted_share"] is None else f"{100 * r['provisional_accepted_share']:.0f}%"
        print(f"| {r['cut_s']:g} s | {r['provisional_written_mean']:g} | {share} | {r['ended_offline']}/{r['answers']} "
              f"| {r['extra_to_exact_s_provisional']:+.2f} s | {r['extra_to_exact_s_waiting']:+.2f} s "
              f"| {r['whole_answer_s_provisional']:.2f} s | {r['uncut_s']:.2f} s | {_s(r['heal_to_cloud_seen_s'])} "
              f"| {_s(r['check_s'])} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
