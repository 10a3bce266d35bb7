"""Figures for `tandem serve` and offline fallback, measured side by side in one run.

    python -m bench.serve_figures [--max-tokens 64] [--repeats 3]

Starts a real `tandem cloud` and a real `tandem serve` (default model pair unless --model /
--draft-model), with a link relay between them so the link can be made silent or cut, and
prints:

1. the cost of the HTTP layer: tokens/s of the same greedy answers through the SDK directly
   (in this process, same cloud) and through `tandem serve` with the openai client, streamed
   and not;
2. time to first token with a healthy cloud, with a silent one (fallback after the timeout),
   and with one already known to be down;
3. a cut mid-answer: the longest pause between chunks at the switch against the median pause
   before it, and how long until answers are hybrid again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
import urllib.request

import openai

from bench.relay import LinkConfig, RelayThread

MESSAGES = [{"role": "user", "content": "Explain in a paragraph why the sky is blue."}]


def start(args: list[str], pattern: str) -> tuple[subprocess.Popen, re.Match]:
    process = subprocess.Popen([sys.executable, "-m", "tandem", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if match := re.search(pattern, line):
            return process, match
    raise SystemExit(f"{args[0]} did not start")


def stream(client, max_tokens: int, on_tokens=None) -> dict:
    """One greedy streamed answer: first-token time, chunk arrival times, ids, final details."""
    started, times, counts, final = time.perf_counter(), [], [], None
    for chunk in client.chat.completions.create(model="tandem", messages=MESSAGES, temperature=0,
                                                max_tokens=max_tokens, stream=True,
                                                extra_body={"return_token_ids": True}):
        times.append(time.perf_counter() - started)
        counts.append((counts[-1] if counts else 0) + len(chunk.choices[0].model_extra.get("token_ids", [])))
        final = chunk
        if on_tokens:
            on_tokens(counts[-1])
    return {"ttft": times[0], "times": times, "counts": counts, "tokens": counts[-1], "elapsed": times[-1],
            "tandem": final.tandem}


def health(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=10) as response:
        return json.loads(response.read())


def sdk_answers(cloud: str, draft: str | None, max_tokens: int, repeats: int) -> list[float]:
    from edge.config import EdgeConfig
    from edge.engine import Generation
    from edge.sdk import AsyncTandemClient

    async def run() -> list[float]:
        rates = []
        async with AsyncTandemClient(config=EdgeConfig(cloud=cloud, draft_model=draft)) as tandem:
            prompt = tandem.encode_chat(MESSAGES)
            for _ in range(repeats + 1):  # the first is a warm-up
                generation, started = Generation(tandem.mode), time.perf_counter()
                async for _ in tandem.deltas(prompt, generation, max_tokens=max_tokens):
                    pass
                rates.append(len(generation.token_ids) / (time.perf_counter() - started))
        return rates[1:]

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="target (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--draft-model", default=None, help="draft GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    args = parser.parse_args()
    n = args.max_tokens
    model = ["--model", args.model] if args.model else []
    draft = ["--draft-model", args.draft_model] if args.draft_model else []

    cloud, match = start(["cloud", "--port", "0", *model], r"listening on [\d.]+:(\d+)")
    relay = RelayThread(("127.0.0.1", int(match.group(1)))).start()
    address = f"127.0.0.1:{relay.port}"
    serve, match = start(["serve", "--port", "0", "--cloud", address, *draft], r"ready: (http://\S+)")
    base_url = match.group(1)
    client = openai.OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=300)
    try:
        print(f"# tandem serve figures: {n} greedy tokens per answer, {args.repeats} answers per row")
        sdk = sdk_answers(address, args.draft_model, n, args.repeats)
        stream(client, n)  # warm-up
        streamed = [stream(client, n) for _ in range(args.repeats)]
        whole = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            r = client.chat.completions.create(model="tandem", messages=MESSAGES, temperature=0, max_tokens=n)
            whole.append(r.usage.completion_tokens / (time.perf_counter() - started))
        sdk_rate = statistics.median(sdk)
        stream_rate = statistics.median(s["tokens"] / s["elapsed"] for s in streamed)
        print("\n## 1. HTTP layer (median tokens/s)")
        print(f"SDK in-process          {sdk_rate:7.1f}  1.00x")
        print(f"serve, streamed (SSE)   {stream_rate:7.1f}  {stream_rate / sdk_rate:.2f}x")
        print(f"serve, one response     {statistics.median(whole):7.1f}  {statistics.median(whole) / sdk_rate:.2f}x")

        healthy = statistics.median(s["ttft"] for s in streamed)
        relay.set_config(LinkConfig(one_way_delay_s=600.0))  # silent: nothing errors, nothing arrives
        silent = stream(client, n)
        known_down = stream(client, n)  # the cloud is now marked down: no wait at all
        print("\n## 2. time to first token (s)")
        print(f"healthy cloud           {healthy:7.3f}  1.00x  ({streamed[0]['tandem']['answered_by']})")
        print(f"silent cloud            {silent['ttft']:7.3f}  {silent['ttft'] / healthy:.2f}x  "
              f"({silent['tandem']['answered_by']}; fallback timeout 2 s)")
        print(f"cloud known down        {known_down['ttft']:7.3f}  {known_down['ttft'] / healthy:.2f}x  "
              f"({known_down['tandem']['answered_by']})")

        relay.set_config(LinkConfig())
        relay.drop_connections()
        healed = time.perf_counter()
        while health(base_url)["cloud"]["state"] != "up":
            time.sleep(0.05)
        back_s = time.perf_counter() - healed

        cut_done = []

        def cut(tokens: int) -> None:
            if tokens >= n // 4 and not cut_done:
                cut_done.append(True)
                relay.drop_connections()

        switched = stream(client, n, cut)
        at, times, counts = switched["tandem"]["fallback_at"], switched["times"], switched["counts"]
        first_local = next(i for i, count in enumerate(counts) if count > at)  # first chunk with local tokens
        gaps = [b - a for a, b in zip(times, times[1:])]  # gaps[i]: pause before chunk i + 1
        hybrid_gaps, switch_gap = gaps[: first_local - 1], gaps[first_local - 1]
        print("\n## 3. link cut mid-answer")
        print(f"answered by             {switched['tandem']['answered_by']}, local from token {at} of "
              f"{switched['tokens']}")
        print(f"median hybrid chunk gap {statistics.median(hybrid_gaps) * 1000:7.1f} ms  1.00x")
        print(f"gap at the switch       {switch_gap * 1000:7.1f} ms  {switch_gap / statistics.median(hybrid_gaps):.2f}x")
        print(f"cloud reconnected       {back_s:7.3f} s after the link healed")
    finally:
        for process in (serve, cloud):
            process.terminate()
            process.wait(timeout=30)
        relay.stop()
    print(f"\ncommand: python -m bench.serve_figures --max-tokens {n} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
