"""Do larger passes pay on this CPU? Forward-pass time against the tokens in the pass, per dtype.

    PYTHONPATH=. taskset -c 0 python -m bench.pass_sizes --dtypes float32,bfloat16 --sizes 9,36,72,144,288,576

What `--max-batch-tokens` trades: a pass of more tokens verifies more sessions' blocks at once
(more tokens per second of pass, as long as the matmuls get more efficient), but every session
in it waits for the whole pass. Each size is run as sessions verifying 9-token blocks (8 drafts
and the anchor) on a 200-token context each, the cloud's own packed forward pass (cloud/model.py),
one torch thread, the median of --repeats. Prints ms per pass and tokens/s per size; writes
pass_sizes.json to --out. The default --max-batch-tokens is the size past which tokens/s gains
less than --pays (10%) per doubling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

BLOCK, CONTEXT = 9, 200


def time_pass(target, tokens: int, repeats: int) -> float:
    """Median seconds of one pass holding `tokens` tokens as 9-token blocks on 200-token contexts."""
    from cloud.blocks import BLOCK_SIZE
    from cloud.target_engine import Segment

    sessions, rest = divmod(tokens, BLOCK)
    sizes = [BLOCK] * sessions + ([rest] if rest else [])
    pool = target.new_kv_pool(len(sizes) * (CONTEXT + BLOCK + 2 * BLOCK_SIZE) * target.kv_bytes_per_token)
    tables = [pool.new_table() for _ in sizes]
    context = (target.tokenize("The history of the printing press begins in the fifteenth century. ") * 40)[:CONTEXT]
    for table in tables:  # the contexts, cached (not timed)
        target.forward_batch(pool, [Segment(table, context, 1)])
    times = []
    for _ in range(repeats):
        segments = [Segment(t, context[:n], n) for t, n in zip(tables, sizes)]
        started = time.perf_counter()
        target.forward_batch(pool, segments)
        times.append(time.perf_counter() - started)
        for table in tables:
            table.truncate(CONTEXT)
    for table in tables:
        table.release()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--sizes", default="9,36,72,144,288,576")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pays", type=float, default=0.10, help="least tokens/s gain per doubling that pays")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    from cloud.model import LoadOptions, TargetModel

    load_start = os.getloadavg()[0]
    sizes = [int(s) for s in args.sizes.split(",")]
    report = {"sizes": sizes, "block": BLOCK, "context": CONTEXT, "dtypes": {}}
    for dtype in args.dtypes.split(","):
        target = TargetModel.load(args.model, LoadOptions(device="cpu", dtype=dtype, threads=1))
        target.warmup()
        rows = [{"tokens": n, "ms": round(1000 * (s := time_pass(target, n, args.repeats)), 1),
                 "tokens_per_s": round(n / s, 1)} for n in sizes]
        report["dtypes"][dtype] = {"rows": rows, "pays_up_to": pays_up_to(rows, args.pays)}
    report["load_average"] = [load_start, os.getloadavg()[0]]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "pass_sizes.json").write_text(json.dumps(report, indent=1))
    print(f"passes of 9-token blocks on {CONTEXT}-token contexts, one torch thread, CPUs "
          f"{sorted(os.sched_getaffinity(0))}, load average {report['load_average'][0]:.2f} -> "
          f"{report['load_average'][1]:.2f}")
    for dtype, result in report["dtypes"].items():
        cells = "  ".join(f"{r['tokens']}: {r['ms']:.0f} ms {r['tokens_per_s']:.0f} tok/s" for r in result["rows"])
        print(f"{dtype:<9} {cells}\n{'':<9} larger passes pay up to {result['pays_up_to']} tokens "
              f"(tokens/s gains >= {args.pays:.0%} per step)")
    return 0


def pays_up_to(rows: list[dict], least_gain: float) -> int:
    """The largest size reached while each step up still raised tokens/s by at least least_gain."""
    best = rows[0]["tokens"]
    for before, after in zip(rows, rows[1:]):
        if after["tokens_per_s"] < (1 + least_gain) * before["tokens_per_s"]:
            break
        best = after["tokens"]
    return best


if __name__ == "__main__":
    raise SystemExit(main())
