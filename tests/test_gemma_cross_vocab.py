"""The documented heterogeneous pair: a Gemma 3 270M target verifies the default SmolLM2 draft.

Two families, two tokenizers (Gemma's 262,144-token SentencePiece with a BOS, SmolLM2's
49,152-token byte-level BPE without one). The cloud's target is transformers' Gemma (from the
GGUF that scripts/gemma_gguf.sh assembles); the edge drafts with the default llama.cpp SmolLM2
and reads Gemma's tokenizer from the same file, as `tandem generate --model $GEMMA` does
(edge/cross_vocab.py). This Gemma is the pretrained model, so prompts are raw continuations.
The hybrid's greedy output must equal transformers' generate(do_sample=False) on the target's
own encoding of each prompt.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import hf_greedy

pytestmark = pytest.mark.slow

RAW_PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "def is_prime(n):\n    ",
    "import numpy as np\n\narray = np.",
    "東京は日本の",
    "我最喜欢的食物是",
    "Emoji story: 🚀🌕 The rocket",
    "I love pizza 🍕 because",
    "a  b   c    d\n\n\n    e",
    "Shopping list:\n- apples\n- bread\n-",
    "    indented    text   with     many   spaces",
    "<p>Hello, <b>world</b>!</p>\n<p>",
    "Once upon a time, a small robot",
]
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def pair(gemma_path):
    """(target, cloud, drafter): transformers Gemma in an embedded cloud, the default SmolLM2 draft."""
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from cloud.model import LoadOptions, TargetModel
    from edge.llama_drafter import LlamaDrafter

    target = TargetModel.load(str(gemma_path), LoadOptions(device="cpu", threads=1))
    drafter = LlamaDrafter(None, n_ctx=1024, threads=1)
    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=target) as cloud:
        yield target, cloud, drafter
    drafter.close()


def test_gemma_verifies_the_smollm2_draft_exactly(pair, gemma_path):
    from edge.client import CloudClient
    from edge.cross_vocab import CrossVocabDrafter
    from edge.engine import EdgeEngine, GenerationRequest, Mode
    from edge.tokenizer import load_tokenizer

    target, cloud, drafter = pair
    assert drafter.fingerprint != target.fingerprint  # the vocabularies differ

    async def run_all():
        client = CloudClient(cloud.address)
        try:
            engine = EdgeEngine(drafter, client, target_tokenizer=lambda: load_tokenizer(gemma_path))
            await engine.connect()
            assert isinstance(engine.drafter, CrossVocabDrafter)
            results = []
            for text in RAW_PROMPTS:
                prompt = engine.encode(text)
                generation = await engine.generate_to_end(GenerationRequest(prompt, NEW_TOKENS), Mode.HYBRID)
                results.append((text, prompt, generation))
            return results
        finally:
            await client.close()

    accepted = drafted = 0
    for text, prompt, generation in asyncio.run(run_all()):
        assert prompt == list(target.text.hf(text)["input_ids"])  # the target's own encoding, with <bos>
        assert generation.token_ids == hf_greedy(target, prompt, NEW_TOKENS), text
        accepted, drafted = accepted + generation.stats.accepted, drafted + generation.stats.drafted
    assert accepted > 0.3 * drafted, (accepted, drafted)  # the draft's text mostly stood
