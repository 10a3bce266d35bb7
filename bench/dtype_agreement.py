"""What bfloat16 changes: greedy agreement with float32, and batched-versus-alone divergence.

    PYTHONPATH=. taskset -c 0 python -m bench.dtype_agreement --prompts 32 --tokens 64 --out bench-results

Runs the cloud's own forward pass (cloud/model.py: packed batch, paged KV) with no server, one
torch thread, greedy, each answer stopping at --tokens or an end id:
- **bf16 vs fp32 alone**: each prompt decoded alone at both dtypes; how many answers are
  identical, and how many tokens agree before the first difference. No target: it is what the
  dtype is.
- **batched vs alone, per dtype**: all prompts decoded together (one pass per step holds every
  prompt's next token, as a loaded cloud-only server does) against each alone.
- **verification blocks vs one by one, per dtype**: along each alone answer, teacher-forced in
  blocks of --block tokens (a hybrid verification pass), the fraction of positions whose argmax
  is the one-by-one token.
At float32 batching changes only how the linear layers group their sums; at bfloat16 a token
whose top two logits lie within bf16's rounding can flip. Prints a table, writes
dtype_agreement.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.prompts import PROMPTS

MORE_PROMPTS = [
    "How do vaccines train the immune system?", "Summarize the plot of Romeo and Juliet.",
    "What is the difference between weather and climate?", "Explain recursion to a ten-year-old.",
    "Write a haiku about autumn leaves.", "Why is the sky blue?", "List five tips for better sleep.",
    "How does a bicycle stay upright?", "What is a black hole?", "Explain how compound interest works.",
    "Write a limerick about a cat who loves coffee.", "What are the benefits of learning a second language?",
    "How do airplanes fly?", "Describe the rules of chess briefly.", "What is photosynthesis?",
    "Give three ideas for a birthday party.", "Explain what an API is.", "How do I boil an egg?",
    "What causes earthquakes?", "Write a thank-you note to a teacher.", "What is machine learning?",
    "How does the stock market work?", "Describe a day in the life of a honeybee.",
    "Explain the rules of the road for cyclists.",
]


def chat_prompts(target, count: int) -> list[list[int]]:
    texts = [target.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                  add_generation_prompt=True)
             for p in (PROMPTS + MORE_PROMPTS)[:count]]
    return [target.tokenize(text) for text in texts]


def _pool(target, prompts: list[list[int]], tokens: int):
    from cloud.blocks import BLOCK_SIZE

    slots = sum(len(p) + tokens + 2 * BLOCK_SIZE for p in prompts)
    return target.new_kv_pool(slots * target.kv_bytes_per_token)


def decode(target, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    """Greedy answers of all `prompts` decoded together: one pass per step over every live answer."""
    from cloud.target_engine import Segment

    pool = _pool(target, prompts, tokens)
    tables = [pool.new_table() for _ in prompts]
    answers: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))
    feed = {i: prompts[i] for i in live}
    while live:
        logits = target.forward_batch(pool, [Segment(tables[i], feed[i], 1) for i in live])
        for i, rows in zip(list(live), logits):
            token = rows.argmax()[0]
            answers[i].append(token)
            feed[i] = [token]
            if token in target.eos_token_ids or len(answers[i]) >= tokens:
                live.remove(i)
    for table in tables:
        table.release()
    return answers


def block_agreement(target, prompt: list[int], answer: list[int], block: int) -> tuple[int, int]:
    """(positions whose argmax in a `block`-token pass is the answer's next token, positions checked)."""
    from cloud.target_engine import Segment

    pool = _pool(target, [prompt], len(answer))
    table = pool.new_table()
    first = target.forward_batch(pool, [Segment(table, prompt, 1)])[0].argmax()
    agree, checked = int(first[0] == answer[0]), 1
    for start in range(0, len(answer) - 1, block):
        chunk = answer[start:start + block]
        predicted = target.forward_batch(pool, [Segment(table, chunk, len(chunk))])[0].argmax()
        expected = answer[start + 1:start + 1 + len(chunk)]
        agree += sum(p == e for p, e in zip(predicted, expected))
        checked += len(expected)
    table.release()
    return agree, checked


def compare(answers: list[list[int]], reference: list[list[int]]) -> dict:
    """How many answers are identical, and tokens agreeing before each first difference."""
    prefix = [next((k for k, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
              for x, y in zip(answers, reference)]
    return {"identical": sum(x == y for x, y in zip(answers, reference)), "answers": len(answers),
            "tokens_before_first_difference": sum(prefix), "tokens": sum(len(y) for y in reference)}


def measure(model: str | None, dtype: str, prompts_count: int, tokens: int, block: int) -> dict:
    from cloud.model import LoadOptions, TargetModel

    target = TargetModel.load(model, LoadOptions(device="cpu", dtype=dtype, threads=1))
    prompts = chat_prompts(target, prompts_count)
    started = time.monotonic()
    alone = [decode(target, [p], tokens)[0] for p in prompts]
    alone_s = time.monotonic() - started
    started = time.monotonic()
    batched = decode(target, prompts, tokens)
    batched_s = time.monotonic() - started
    blocks = [block_agreement(target, p, a, block) for p, a in zip(prompts, alone)]
    return {"dtype": str(target.model.dtype).removeprefix("torch."), "alone": alone, "alone_s": alone_s,
            "batched_s": batched_s, "batched_vs_alone": compare(batched, alone),
            "blocks_vs_one_by_one": {"agree": sum(a for a, _ in blocks), "positions": sum(c for _, c in blocks),
                                     "block": block}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="target (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--block", type=int, default=9, help="verification block (8 drafts + 1)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    runs = {d: measure(args.model, d, args.prompts, args.tokens, args.block) for d in args.dtypes.split(",")}
    report = {"load_average": [load_before, os.getloadavg()[0]], "prompts": args.prompts, "tokens": args.tokens,
              "cpu_affinity": sorted(os.sched_getaffinity(0)), "dtypes": {}}
    names = list(runs)
    for name, run in runs.items():
        report["dtypes"][name] = {k: v for k, v in run.items() if k != "alone"}
    if len(names) == 2:
        report["vs_alone"] = {f"{names[1]}_vs_{names[0]}": compare(runs[names[1]]["alone"], runs[names[0]]["alone"])}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "dtype_agreement.json").write_text(json.dumps(report, indent=1))
    print(format_report(report))
    return 0


def format_report(report: dict) -> str:
    def line(label: str, c: dict) -> str:
        return (f"{label:<34} identical {c['identical']:>2}/{c['answers']}   tokens before first difference "
                f"{c['tokens_before_first_difference']}/{c['tokens']} "
                f"({c['tokens_before_first_difference'] / max(c['tokens'], 1):.1%})")

    lines = [f"{report['prompts']} prompts x {report['tokens']} tokens, greedy, one torch thread, "
             f"CPUs {report['cpu_affinity']}, load average {report['load_average'][0]} -> {report['load_average'][1]}"]
    for label, c in report.get("vs_alone", {}).items():
        lines.append(line(label.replace("_vs_", " vs ") + " (alone)", c))
    for name, run in report["dtypes"].items():
        lines.append(line(f"{name} batched vs alone", run["batched_vs_alone"]))
        b = run["blocks_vs_one_by_one"]
        lines.append(f"{name + ' blocks of ' + str(b['block']) + ' vs one by one':<34} argmax agrees "
                     f"{b['agree']}/{b['positions']} ({b['agree'] / max(b['positions'], 1):.2%})   "
                     f"time alone {run['alone_s']:.1f} s, batched {run['batched_s']:.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
