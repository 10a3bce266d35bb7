"""What TLS, mutual TLS and bearer tokens cost a hybrid generation, side by side in one run.

    python -m bench.security [--rounds 5] [--max-tokens 64]

Starts one in-process cloud per setup (plaintext, TLS, mutual TLS + token) over the same
loaded target model, then runs the same greedy hybrid generation through each, interleaved
round by round so that machine load hits every setup alike. Loopback is the worst case for
the relative cost: no network time hides the encryption. Prints medians and ratios to
plaintext, and checks that every setup produced the same tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.pki import make_pki  # noqa: E402
from cloud.config import CloudConfig  # noqa: E402
from cloud.embedded import EmbeddedCloud  # noqa: E402
from cloud.server import load_model  # noqa: E402
from common.channel import ChannelSecurity  # noqa: E402
from edge.client import CloudClient  # noqa: E402
from edge.engine import EdgeEngine, GenerationRequest, Mode  # noqa: E402
from edge.llama_drafter import LlamaDrafter  # noqa: E402

PROMPT = "<|im_start|>user\nExplain in three sentences why the sky is blue.<|im_end|>\n<|im_start|>assistant\n"
TOKEN = "bench-token"


def setups(pki, tokens_file: Path) -> dict[str, tuple[dict, ChannelSecurity]]:
    tls = dict(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    return {
        "plaintext": ({}, ChannelSecurity()),
        "tls": (tls, ChannelSecurity(ca_file=str(pki.ca))),
        "mtls+token": ({**tls, "tls_client_ca": str(pki.ca), "auth_tokens_file": str(tokens_file)},
                       ChannelSecurity(ca_file=str(pki.ca), client_cert=str(pki.client.cert),
                                       client_key=str(pki.client.key), token=TOKEN)),
    }


async def one_generation(address: str, security: ChannelSecurity, drafter, prompt, max_tokens: int):
    client = CloudClient(address, security=security)
    try:
        engine = EdgeEngine(drafter, client)
        await engine.connect()
        return await engine.generate_to_end(GenerationRequest(prompt, max_tokens), Mode.HYBRID)
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default=None, help="target (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--draft-model", default=None, help="draft GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tandem-bench-security-"))
    pki = make_pki(work / "pki")
    tokens_file = work / "tokens"
    tokens_file.write_text(TOKEN + "\n")
    model = load_model(CloudConfig(model=args.model))
    drafter = LlamaDrafter(args.draft_model)
    prompt = drafter.tokenize(PROMPT)
    clouds, results, outputs = {}, {}, {}
    try:
        for name, (config, security) in setups(pki, tokens_file).items():
            clouds[name] = (EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, **config), model=model).start(),
                            security)
            results[name] = []
        for _ in range(args.rounds + 1):  # the first round warms up and is not counted
            for name, (cloud, security) in clouds.items():
                started = time.perf_counter()
                generation = asyncio.run(one_generation(cloud.address, security, drafter, prompt, args.max_tokens))
                # (connect + handshake + Info + generation, the generation alone)
                results[name].append((time.perf_counter() - started, generation.stats.elapsed_s))
                outputs.setdefault(name, generation.token_ids)
    finally:
        for cloud, _ in clouds.values():
            cloud.stop()
        drafter.close()
    assert len({tuple(ids) for ids in outputs.values()}) == 1, "setups produced different tokens"
    def medians(name):
        rounds = results[name][1:]
        return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)

    base_total, base_stream = medians("plaintext")
    print(f"hybrid generation of {args.max_tokens} tokens, median of {args.rounds} interleaved rounds (loopback); "
          "'with connect' adds a new channel, its handshake and Info:")
    for name in results:
        total, stream = medians(name)
        print(f"  {name:<11} stream {stream * 1000:7.1f} ms (x{stream / base_stream:.3f})   "
              f"with connect {total * 1000:7.1f} ms (x{total / base_total:.3f})")


if __name__ == "__main__":
    main()
