"""`tandem bench --json-schemas`: acceptance under a grammar, the draft masked vs unmasked.

    tandem bench --json-schemas --rtt-ms 20 --out bench-results

The same two pinned processes and emulated links as `tandem bench`. At each RTT, each of the
ten schemas' prompts (bench/schemas.py) is answered under its schema by every variant in turn,
the order rotating from schema to schema: cloud-only; hybrid with the draft masked by the
grammar (the default); hybrid with it unmasked (`mask_draft=False` for that generation only,
bench/worker.py's "speculation" override); and, unless --no-json-schemas-lockstep, the same
two with the adaptive policy off (6 drafts per block, one in flight), the setting of
tests/test_structured_default_pair.py.

Tokens per round counts only rounds that verified drafts: the committed tokens of such a round
are its accepted drafts plus the one the cloud adds (a correction or a bonus). With the
adaptive policy the edge may stop drafting while that does not pay (the cloud then decodes
alone, its tokens counted as cloud-decoded), and the first round carries no drafts; neither
says anything about the drafts. Every hybrid answer must be cloud-only's token for token
(greedy), and every answer that ends with "stop" must parse and validate (jsonschema).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.schemas import SCHEMAS, schema_instruction
from common.errors import InvalidArgument

LOCKSTEP = {"adaptive": False, "draft_tokens": 6, "max_in_flight": 1}


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str  # the worker's mode
    speculation: dict  # SpeculationConfig fields overridden for its generations


def variants(lockstep: bool) -> list[Variant]:
    chosen = [Variant("cloud", "cloud", {}), Variant("masked", "hybrid", {}),
              Variant("unmasked", "hybrid", {"mask_draft": False})]
    if lockstep:
        chosen += [Variant("masked lock-step", "hybrid", LOCKSTEP),
                   Variant("unmasked lock-step", "hybrid", {**LOCKSTEP, "mask_draft": False})]
    return chosen


# (masked, unmasked) pairs compared, with the name of their setting.
PAIRS = [("masked", "unmasked", "speculation flags as given"),
         ("masked lock-step", "unmasked lock-step", "adaptive off, 6 drafts per block, lock-step")]


def validates(text: str, finish_reason: str, schema: dict) -> bool | None:
    """Whether a finished answer parses and validates; None for one cut by max_tokens (no document)."""
    import jsonschema

    if finish_reason != "stop":
        return None
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def record(rtt: float, index: int, variant: Variant, result: dict) -> dict:
    """One generation's figures; `result` is the worker's answer."""
    stats = result["stats"]
    drafting = [accepted + 1 for drafted, accepted in result["blocks"] if drafted]
    return {
        "rtt_ms": rtt, "schema": index, "variant": variant.name, "mode": variant.mode,
        "speculation": variant.speculation, "token_ids": result["token_ids"],
        "finish_reason": result["finish_reason"], "text": result["text"],
        "valid": validates(result["text"], result["finish_reason"], SCHEMAS[index]),
        "drafting_rounds": len(drafting), "drafting_round_tokens": sum(drafting),
        **{key: stats[key] for key in ("tokens", "rounds", "drafted", "accepted", "cloud_decoded", "hinted",
                                       "mode_switches", "ttft_s", "elapsed_s", "tokens_per_s")},
    }


def generation_timeout_s(max_tokens: int) -> float:
    """Long enough for a slow machine; a generation that takes longer is stuck (an error, not a wait)."""
    return 60 + 2 * max_tokens


def measure(rtts_ms: list[float], link, chosen: list[Variant], max_tokens: int, worker, relay,
            progress) -> list[dict]:
    """Every (RTT, schema, variant) once; `link(rtt)` is the emulated link of that RTT."""
    records = []
    for rtt in rtts_ms:
        relay.set_config(link(rtt))
        for index, schema in enumerate(SCHEMAS):
            turn = index % len(chosen)  # no variant always runs right after the same other one
            for variant in chosen[turn:] + chosen[:turn]:
                label = f"rtt {rtt:g} ms, schema {index + 1}/{len(SCHEMAS)}, {variant.name}"
                progress.update(label)
                result = worker.generate(variant.mode, schema_instruction(schema), max_tokens,
                                         speculation=variant.speculation, json_schema=schema,
                                         timeout_s=generation_timeout_s(max_tokens))
                records.append(record(rtt, index, variant, result))
                progress.done += 1
                progress.update(label, f"{result['stats']['tokens_per_s']:.1f} tok/s")
    progress.finish()
    return records


def summarize(records: list[dict]) -> dict[float, dict[str, dict]]:
    """{rtt_ms: {variant: figures}} over the ten schemas."""
    groups: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["rtt_ms"], r["variant"])].append(r)
    cloud = {(r["rtt_ms"], r["schema"]): r["token_ids"] for r in records if r["variant"] == "cloud"}
    summary: dict[float, dict[str, dict]] = defaultdict(dict)
    for (rtt, name), runs in groups.items():
        tokens = sum(r["tokens"] for r in runs)
        rounds = sum(r["drafting_rounds"] for r in runs)
        drafted = sum(r["drafted"] for r in runs)
        hybrid = name != "cloud"
        summary[rtt][name] = {
            "runs": len(runs), "tokens": tokens,
            "tokens_per_s": _div(tokens, sum(r["elapsed_s"] for r in runs)),
            "rounds": sum(r["rounds"] for r in runs) if hybrid else None,
            "drafting_rounds": rounds if hybrid else None,
            "tokens_per_drafting_round": _div(sum(r["drafting_round_tokens"] for r in runs), rounds),
            "accepted_per_draft": _div(sum(r["accepted"] for r in runs), drafted),
            "cloud_decoded": sum(r["cloud_decoded"] for r in runs) if hybrid else None,
            "hinted": sum(r["hinted"] for r in runs) if hybrid else None,
            "identical_to_cloud": sum(r["token_ids"] == cloud.get((rtt, r["schema"])) for r in runs) if hybrid
            else None,
            "valid": sum(r["valid"] is True for r in runs),
            "invalid": sum(r["valid"] is False for r in runs),
            "cut_by_max_tokens": sum(r["valid"] is None for r in runs),
        }
    return {rtt: dict(sorted(by.items(), key=lambda kv: _ORDER.index(kv[0]))) for rtt, by in sorted(summary.items())}


_ORDER = ["cloud", "masked", "unmasked", "masked lock-step", "unmasked lock-step"]


def ratios(summary: dict[float, dict[str, dict]]) -> list[dict]:
    """Per RTT and setting: masked / unmasked tokens per drafting round, hybrid / cloud-only tok/s."""
    rows = []
    for rtt, by in summary.items():
        for masked, unmasked, setting in PAIRS:
            if masked in by and unmasked in by:
                m, u = by[masked], by[unmasked]
                rows.append({
                    "rtt_ms": rtt, "setting": setting,
                    "masked_over_unmasked_tokens_per_round": _div(m["tokens_per_drafting_round"],
                                                                  u["tokens_per_drafting_round"]),
                    "masked_over_cloud_tokens_per_s": _div(m["tokens_per_s"], by["cloud"]["tokens_per_s"]),
                    "unmasked_over_cloud_tokens_per_s": _div(u["tokens_per_s"], by["cloud"]["tokens_per_s"]),
                    "drafting_rounds": [m["drafting_rounds"], u["drafting_rounds"]],
                })
    return rows


# Fewer drafting rounds than this (either side of a pair) decide nothing: with the adaptive
# policy on short JSON answers the cloud may decode nearly all tokens alone.
MIN_DRAFTING_ROUNDS = 10


def checks(summary: dict[float, dict[str, dict]], ratio_rows: list[dict]) -> list[dict]:
    """The issue's figure (masked must not lower tokens per round) and the answers' exactness."""
    rows = []
    for r in ratio_rows:
        measured = r["masked_over_unmasked_tokens_per_round"]
        decided = measured is not None and min(r["drafting_rounds"]) >= MIN_DRAFTING_ROUNDS
        rows.append({"figure": f"masked / unmasked tokens per drafting round at {r['rtt_ms']:g} ms RTT "
                               f"({r['setting']})", "target": ">= 1",
                     "measured": None if measured is None else round(measured, 3),
                     "met": measured >= 1 if decided else None})
    hybrid = [f for by in summary.values() for name, f in by.items() if name != "cloud"]
    every = [f for by in summary.values() for f in by.values()]
    same, runs = sum(f["identical_to_cloud"] for f in hybrid), sum(f["runs"] for f in hybrid)
    rows.append({"figure": "hybrid answers identical to cloud-only's", "target": "all",
                 "measured": f"{same}/{runs}", "met": same == runs})
    valid, finished = sum(f["valid"] for f in every), sum(f["valid"] + f["invalid"] for f in every)
    rows.append({"figure": "finished answers that parse and validate", "target": "all",
                 "measured": f"{valid}/{finished}", "met": valid == finished})
    return rows


def table(summary: dict[float, dict[str, dict]], ratio_rows: list[dict], check_rows: list[dict]) -> str:
    head = (f"{'RTT ms':>6} | {'variant':<18} | {'tok/s':>6} | {'tok/drafting round':>18} | {'acc/draft':>9} | "
            f"{'drafting rounds':>15} | {'cloud-decoded (hinted)':>22} | {'identical':>9} | {'valid':>5} | {'cut':>3}")
    lines = [head, "-" * len(head)]
    for rtt, by in summary.items():
        for name, f in by.items():
            hybrid = name != "cloud"
            lines.append(
                f"{rtt:>6g} | {name:<18} | {_num(f['tokens_per_s'], 1):>6} | "
                f"{_num(f['tokens_per_drafting_round'], 2):>18} | {_num(f['accepted_per_draft'], 3):>9} | "
                f"{(str(f['drafting_rounds']) + ' of ' + str(f['rounds'])) if hybrid else '':>15} | "
                f"{(str(f['cloud_decoded']) + ' (' + str(f['hinted']) + ')') if hybrid else '':>22} | "
                f"{(str(f['identical_to_cloud']) + '/' + str(f['runs'])) if hybrid else '':>9} | "
                f"{f['valid']:>5} | {f['cut_by_max_tokens']:>3}")
    lines.append("\nratios (each pair measured interleaved in this run):")
    for r in ratio_rows:
        lines.append(f"  {r['rtt_ms']:g} ms, {r['setting']}: masked / unmasked tokens per drafting round "
                     f"{_num(r['masked_over_unmasked_tokens_per_round'], 3)} (over {r['drafting_rounds'][0]} and "
                     f"{r['drafting_rounds'][1]} drafting rounds); hybrid / cloud-only tok/s masked "
                     f"{_num(r['masked_over_cloud_tokens_per_s'], 2)}, unmasked "
                     f"{_num(r['unmasked_over_cloud_tokens_per_s'], 2)}")
    lines.append("\nchecks:")
    for c in check_rows:
        state = (f"not decided: under {MIN_DRAFTING_ROUNDS} drafting rounds" if c["met"] is None
                 else "met" if c["met"] else "MISSED")
        lines.append(f"  [{state}] {c['figure']}: {c['measured']} (target {c['target']})")
    return "\n".join(lines)


def run(args: argparse.Namespace, plan, edge_args: list[str]) -> int:
    """`tandem bench --json-schemas`: `plan` gives the RTTs, max tokens and link (bench/cli.py)."""
    from bench import cli
    from bench.processes import CloudProcess, EdgeWorker
    from bench.relay import RelayThread
    from bench.runner import Progress
    from bench.stamp import code_version, header, provenance
    from common.extras import require_extra

    for extra in ("cloud", "edge"):
        require_extra(extra, "tandem bench --json-schemas")
    if args.temperature != 0:
        raise InvalidArgument("--json-schemas compares greedy answers with cloud-only's: leave --temperature at 0")
    chosen = variants(args.json_schemas_lockstep)
    total = len(plan.rtts_ms) * len(SCHEMAS) * len(chosen)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start, version = os.getloadavg(), code_version()
    print(f"tandem bench --json-schemas: cloud on CPUs {args.cloud_cpus}, edge on CPUs {args.edge_cpus}; {total} "
          f"generations of up to {plan.max_tokens} tokens ({len(SCHEMAS)} schemas x {len(chosen)} variants x "
          f"{len(plan.rtts_ms)} RTTs); load average {load_start[0]:.2f}", file=sys.stderr, flush=True)
    cloud = worker = relay = None
    started = time.monotonic()
    try:
        cloud = CloudProcess(args.cloud_cpus, args.model, out / "cloud.log")
        relay = RelayThread(cloud.address).start()
        worker = EdgeWorker(args.edge_cpus, f"127.0.0.1:{relay.port}", edge_args, out / "edge.log")
        for mode in ("cloud", "hybrid"):  # unrecorded: first calls pay lazy initialization
            worker.generate(mode, schema_instruction(SCHEMAS[0]), min(16, plan.max_tokens), json_schema=SCHEMAS[0],
                            timeout_s=generation_timeout_s(plan.max_tokens))
        records = measure(plan.rtts_ms, plan.link, chosen, plan.max_tokens, worker, relay, Progress(total))
        machine = cli.machine_facts(cloud, worker, load_start, started)
        stamp = provenance(version, cloud.dtype, cloud.torch_threads, worker.info["draft_threads"], load_start)
    finally:
        for part in (worker, relay, cloud):
            if part is not None:
                part.stop()
    summary = summarize(records)
    ratio_rows = ratios(summary)
    check_rows = checks(summary, ratio_rows)
    result = {
        "command": "tandem " + " ".join(sys.argv[1:]),
        "provenance": stamp,
        "settings": {"rtt_ms": plan.rtts_ms, "max_tokens": plan.max_tokens, "schemas": SCHEMAS,
                     "variants": [vars(v) for v in chosen], "edge_flags": edge_args, "model": args.model,
                     "draft_model": args.draft_model, "raw_prompts": args.raw_prompts,
                     "jitter_ms": plan.jitter_ms, "bandwidth_mbps": plan.bandwidth_mbps},
        "machine": machine,
        "summary": {f"{rtt:g}": by for rtt, by in summary.items()},
        "ratios": ratio_rows,
        "checks": check_rows,
        "runs": records,
    }
    path = out / "schemas.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(header("tandem bench --json-schemas", stamp))
    print(table(summary, ratio_rows, check_rows))
    print(f"\nwrote {path} in {machine['wall_s']:.0f}s; load average {load_start[0]:.2f} at start, "
          f"{machine['load_average_end'][0]:.2f} at the end")
    return 0 if all(c["met"] is not False for c in check_rows[-2:]) else 1


def _div(a, b) -> float | None:
    return a / b if a is not None and b else None


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
