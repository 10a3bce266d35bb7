"""The bench's edge process: one draft model, one cloud connection, generations on command.

    python -m bench.worker --cloud HOST:PORT [tandem generate's edge and speculation flags]

It first writes one line, {"ready": true, ...}, saying which CPUs it may use and how many
threads the draft model got. Then it reads one JSON command per line on stdin,
{"mode": "hybrid" | "cloud" | "edge", "prompt": TEXT, "max_tokens": N}, runs that generation
(the prompt wrapped in the model's chat template, or raw with --raw-prompts; greedy unless
--temperature is given; or, with "prompt_tokens": N instead of "prompt", a raw prompt of exactly
N tokens of filler text, "variant" making it unique) and
answers one JSON line (an
optional "speculation" object overrides SpeculationConfig fields for that generation only, so
settings can be compared interleaved in one run; an optional "json_schema" constrains the answer
to that JSON Schema, as response_format does):
{"token_ids", "finish_reason", "stats", "blocks", "sse_bytes"} (and "text" under a schema) or
{"error": MESSAGE}. It exits
at EOF. sse_bytes is what the same answer costs as an OpenAI-style SSE stream (bench/sse.py).

A command with "breakable": true runs over a second connection that passes through a relay
inside this process; with "break_after": N that relay resets the connection once N tokens have
arrived, and the answer resumes (edge/resume.py): `tandem bench` measures the cost of one resume
against the same answer over the same path, unbroken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass, replace

from common.errors import TandemError
from common.wire import SamplingParams
from edge.config import EdgeConfig


def _emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Breakable:
    """An engine on the worker's draft model whose connection runs through a local relay it can reset."""

    def __init__(self, engine, address: str):
        from bench.relay import RelayThread
        from edge.client import CloudClient
        from edge.engine import EdgeEngine

        host, port = address.rsplit(":", 1)
        self.relay = RelayThread((host, int(port))).start()
        self.client = CloudClient(f"127.0.0.1:{self.relay.port}", connect_timeout_s=engine.client.connect_timeout_s)
        self.engine = EdgeEngine(engine.drafter, self.client, engine.config)

    async def close(self) -> None:
        await self.client.close()
        self.relay.stop()


@dataclass(frozen=True)
class Decoding:
    """How every generation of this worker decodes (the worker's --raw-prompts and sampling flags)."""

    raw_prompts: bool = False
    sampling: SamplingParams = SamplingParams()


async def _generate(engine, command: dict, breakable: Breakable | None = None, decoding: Decoding = Decoding()
                    ) -> dict:
    from edge.engine import Generation, GenerationRequest, Mode

    from bench.sse import openai_sse_bytes
    from common.grammar import json_schema_grammar

    mode = Mode(command["mode"])
    if "prompt_tokens" in command:
        prompt = filler_prompt(engine.drafter.tokenize, int(command["prompt_tokens"]), int(command.get("variant", 0)))
    elif decoding.raw_prompts:
        prompt = engine.encode(command["prompt"])
    else:
        prompt = engine.encode_chat([{"role": "user", "content": command["prompt"]}])
    grammar = json_schema_grammar(command["json_schema"]) if "json_schema" in command else ""
    request = GenerationRequest(prompt, max_new_tokens=int(command["max_tokens"]), sampling=decoding.sampling,
                                grammar=grammar)
    default = engine.config
    engine.config = replace(default, **command.get("speculation", {}))
    break_after = int(command.get("break_after") or 0)
    runner = breakable.engine if breakable is not None else engine
    runner.config = engine.config
    if breakable is not None and runner.cloud_info is None:
        await runner.connect()
    generation = Generation(mode)  # its stats clock starts now: TTFT includes opening the call
    broken = False
    try:
        async for _ in runner.generate(request, mode, generation):
            if break_after and not broken and len(generation.token_ids) >= break_after:
                await asyncio.to_thread(breakable.relay.drop_connections)
                broken = True
    finally:
        engine.config = default
    answer = {
        "token_ids": generation.token_ids,
        "finish_reason": generation.finish_reason.label,
        "stats": generation.stats.as_dict(),
        "blocks": generation.stats.verified_blocks,  # (drafted, accepted) per verified block
        "prompt_tokens": len(prompt),
        "sse_bytes": openai_sse_bytes(engine.drafter.token_bytes, generation.token_ids,
                                      generation.finish_reason.label, len(prompt)),
    }
    if grammar:  # the answer's text, for the bench to parse and validate
        answer["text"] = b"".join(engine.drafter.token_bytes(t) for t in generation.token_ids).decode(errors="replace")
    return answer


FILLER = ("The harbour town woke slowly. Fishermen mended nets, children ran along the quay, and the baker "
          "opened his shutters to the smell of bread. Gulls argued over scraps while the tide turned. ")


def filler_prompt(tokenize, tokens: int, variant: int) -> list[int]:
    """A raw prompt of exactly `tokens` token ids: a numbered note ending in a question.

    `variant` changes its first tokens, so no two variants share a cached prefix.
    """
    question = tokenize(" Summarize the notes above in one sentence:")
    body = tokenize(f"Notes, set {variant}.\n")
    day = 0
    while len(body) < tokens:
        day += 1
        body += tokenize(f"Day {day}. {FILLER}")
    return body[: max(1, tokens - len(question))] + question[: tokens - 1]


async def serve(config: EdgeConfig, decoding: Decoding = None) -> None:
    decoding = decoding or Decoding()
    from edge.client import CloudClient
    from edge.llama_drafter import LlamaDrafter
    from edge.engine import EdgeEngine

    drafter = LlamaDrafter(config.draft_model, config.n_ctx, config.threads)
    client = CloudClient(config.cloud, connect_timeout_s=config.connect_timeout_s)
    try:
        engine = EdgeEngine(drafter, client, config.speculation, target_tokenizer=config.target_tokenizer_loader())
        await engine.connect()
        _emit({"ready": True, "pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)),
               "draft_threads": drafter.threads, "draft_model": drafter.name,
               "target_model": engine.cloud_info.model_name})
        loop = asyncio.get_running_loop()
        breakable = None
        try:
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                try:
                    command = json.loads(line)
                    if command.get("breakable") and breakable is None:
                        breakable = Breakable(engine, config.cloud)
                    _emit(await _generate(engine, command, breakable if command.get("breakable") else None, decoding))
                except (TandemError, KeyError, ValueError, TypeError) as exc:
                    _emit({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            if breakable is not None:
                await breakable.close()
    finally:
        await client.close()
        drafter.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    EdgeConfig.add_arguments(parser)
    g = parser.add_argument_group("how every generation decodes")
    g.add_argument("--raw-prompts", action="store_true", help="encode prompts as raw text, without a chat template")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    config = EdgeConfig.from_args(args)
    decoding = Decoding(args.raw_prompts, SamplingParams(args.temperature, args.top_k, args.top_p, args.seed))
    if config.cloud is None:
        parser.error("--cloud HOST:PORT is required")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config, decoding))
    except TandemError as exc:
        _emit({"error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
