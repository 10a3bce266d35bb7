"""`tandem generate`: one raw completion (no chat template unless --chat), streamed or as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from common.checks import check_range, check_readable_file
from common.errors import InvalidArgument
from common.extras import require_extra
from edge.config import EdgeConfig


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="complete a prompt (hybrid, cloud-only or edge-only)",
        description="Complete PROMPT. hybrid: the local model drafts, the cloud verifies (output is exactly "
                    "the cloud model's); cloud: the cloud generates alone; edge: the local model alone. "
                    "Without --cloud an embedded cloud starts on loopback and is reached over real gRPC.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("prompt", metavar="PROMPT", help="prompt text (raw completion)")
    parser.add_argument("--mode", choices=["hybrid", "cloud", "edge"], default="hybrid")
    parser.add_argument("--max-tokens", type=int, default=128, help="most new tokens")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    parser.add_argument("--chat", action="store_true", help="wrap PROMPT in the model's chat template")
    g = parser.add_argument_group("sampling (temperature 0 = greedy)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0, help="0 disables")
    g.add_argument("--top-p", type=float, default=1.0, help="1 disables")
    g.add_argument("--seed", type=int, default=None,
                   help="fixes the output of a sampled run; completion i of --n uses seed + i")
    g.add_argument("--n", type=int, default=1, help="completions (sharing one connection and model)")
    g.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop string: the text ends before its first occurrence (repeatable)")
    g.add_argument("--json-schema", metavar="FILE", default=None,
                   help="structured output: the answer is JSON valid under the JSON Schema in FILE, "
                        "exactly as the cloud model decodes under that constraint")
    g.add_argument("--draft-mode", choices=["ids", "sparse"], default="ids",
                   help="ids: only token ids cross the wire; sparse: drafts also carry their top-k q "
                        "(see the README's sampling section for the measured trade-off)")
    EdgeConfig.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_range(args.max_tokens, "--max-tokens", 1)
    check_range(args.n, "--n", 1)
    if args.seed is not None:
        check_range(args.seed, "--seed", 0, 2**63 - 1)
    check_range(args.temperature, "--temperature", 0)
    check_range(args.top_k, "--top-k", 0)
    check_range(args.top_p, "--top-p", 0, 1, low_open=True)
    args.grammar = _schema_grammar(args.json_schema) if args.json_schema else ""
    EdgeConfig.from_args(args).validate()  # before anything loads
    return asyncio.run(_generate(args))


def _schema_grammar(path: str) -> str:
    """The grammar of --json-schema FILE, or an InvalidArgument naming the flag and what is wrong."""
    from common.grammar import json_schema_grammar

    text = check_readable_file(path, "--json-schema").read_text(encoding="utf-8", errors="replace")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"--json-schema {path!r} is not JSON: {e}") from None
    return json_schema_grammar(schema, f"--json-schema {path!r}")


async def _generate(args: argparse.Namespace) -> int:
    from edge.chat import notice
    from edge.engine import Generation, Mode
    from edge.sdk import AsyncTandemClient, served_by_of
    from edge.generation_stats import GenerationStats

    if args.mode != "cloud":
        require_extra("edge", f"tandem generate --mode {args.mode} (the local draft model)", ("llama_cpp",))
    if args.cloud is None and args.mode != "edge":
        require_extra("cloud", "tandem generate without --cloud (it starts a cloud in this process)")
    tandem = AsyncTandemClient(config=EdgeConfig.from_args(args), mode=args.mode)
    options = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, draft_mode=args.draft_mode, chat=args.chat, stop=args.stop,
                   grammar=args.grammar)
    choices, stats = [], []
    async with tandem:
        for i in range(args.n):
            seed = None if args.seed is None else args.seed + i
            generation = Generation(Mode(args.mode))
            parts = []
            async for delta in tandem.stream(args.prompt, generation, seed=seed, **options):
                parts.append(delta)
                if not args.json:
                    print(delta, end="", flush=True)
            choices.append({"text": "".join(parts), "token_ids": generation.token_ids,
                            "finish_reason": generation.finish_reason.label, "seed": generation.seed,
                            "degraded": generation.degraded, "answered_by": generation.answered_by,
                            "served_by": served_by_of(generation)})
            stats.append(generation.stats)
            if not args.json:
                print(("\n" if args.n > 1 else ""), end="", flush=True)
                if generation.degraded:
                    print(f"\n{notice(generation)}", file=sys.stderr)
    total = GenerationStats.combined(stats)
    if args.json:
        # One completion also keeps its fields at the top level, as without --n.
        single = choices[0] if args.n == 1 else {}
        out = {"mode": args.mode, **single, "choices": choices, "stats": total}
        print(json.dumps(out, ensure_ascii=False))
    else:
        answered_by = {c["answered_by"] for c in choices}  # "local" etc. when the cloud was unreachable
        print(f"\n{_summary(args.mode, total, '+'.join(sorted(answered_by)))}", file=sys.stderr)
    return 0


def _summary(mode: str, s: dict, answered_by: str) -> str:
    line = f"[{answered_by}] {s['tokens']} tokens in {s['elapsed_s']:.2f}s ({s['tokens_per_s']:.1f} tok/s), TTFT {s['ttft_s']:.3f}s"
    if mode != "edge":
        line += (f", {s['tokens_per_round']:.2f} tokens/round, {s['cloud_forward_passes']} cloud passes, "
                 f"{s['bytes_sent']} B up / {s['bytes_received']} B down")
    if mode == "hybrid":
        line += f", accepted {s['accepted']}/{s['drafted']} drafts"
    return line
