"""Time to first token of each turn of a long chat through `tandem serve`.

    python -m bench.chat_turns --turns 20 --max-tokens 48

Starts `tandem serve` (embedded cloud, default models, prefix cache on), then plays a chat of
--turns user messages through its OpenAI endpoint, each request carrying the whole history
(as chat apps do). For every turn it prints the prompt length, the time to first token as the
client saw it (request sent -> first streamed text) and as the engine measured it, and the
cloud's forward passes: with prefix reuse, a turn prefills only what the last turn left
(the tokens after its prompt's last chunk boundary, its answer and the new message), so turn
20's first token should cost about what turn 1's did. Prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

TOPICS = ["lighthouses", "tides", "sea glass", "harbour cranes", "storm petrels", "kelp forests", "fog horns",
          "shipwrecks", "sand dunes", "coral", "whales", "fishing boats", "salt marshes", "ferries", "buoys",
          "jellyfish", "cliffs", "seals", "rock pools", "sailing knots", "pier lamps", "oyster beds"]


def stream_turn(base_url: str, messages: list[dict], max_tokens: int) -> tuple[float, str, dict]:
    """(client-side seconds to the first text, the answer, the final chunk's `tandem` stats)."""
    body = json.dumps({"model": "tandem", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", body, {"Content-Type": "application/json"})
    started = time.perf_counter()
    first, parts, details, usage = None, [], {}, {}
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                raise RuntimeError(chunk["error"])
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    first = first or time.perf_counter() - started
                    parts.append(text)
            details = chunk.get("tandem", details)
            usage = chunk.get("usage") or usage
    return first or 0.0, "".join(parts), {**details.get("stats", {}), "answered_by": details.get("answered_by"),
                                          "prompt_tokens": usage.get("prompt_tokens")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=48, help="answer length of every turn")
    parser.add_argument("--serve-args", default="", help="extra flags for tandem serve")
    args = parser.parse_args()
    load_before = os.getloadavg()
    command = [sys.executable, "-m", "tandem", "serve", "--port", "0", *args.serve_args.split()]
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready = serve.stdout.readline()
        match = re.search(r"(http://\S+/v1)", ready)
        if not match:
            raise SystemExit(f"tandem serve did not start: {ready!r}")
        base_url = match.group(1)
        messages = [{"role": "system", "content": "You are a concise assistant who knows the sea."}]
        rows = []
        print(f"{'turn':>4} | {'prompt tokens':>13} | {'TTFT ms client':>14} {'engine':>7} | {'cloud passes':>12} | answered by")
        for turn in range(args.turns):
            topic = TOPICS[turn % len(TOPICS)]
            messages.append({"role": "user", "content": f"Tell me one surprising fact about {topic}, and how it "
                                                        f"connects to what we discussed before."})
            client_ttft, answer, stats = stream_turn(base_url, messages, args.max_tokens)
            messages.append({"role": "assistant", "content": answer})
            rows.append((turn + 1, stats.get("prompt_tokens"), client_ttft, stats.get("ttft_s"),
                         stats.get("cloud_forward_passes"), stats.get("answered_by")))
            print(f"{turn + 1:>4} | {rows[-1][1]:>13} | {1000 * client_ttft:>14.0f} {1000 * (rows[-1][3] or 0):>7.0f} | "
                  f"{rows[-1][4]:>12} | {rows[-1][5]}", flush=True)
        first, last = rows[0], rows[-1]
        print(f"\nturn {last[0]} / turn 1 time to first token: client {last[2] / first[2]:.2f}, "
              f"engine {last[3] / first[3]:.2f} (target <= 2)")
        print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
              "(1-minute; the machine is shared)")
    finally:
        serve.terminate()
        serve.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
