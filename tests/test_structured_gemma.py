"""Structured output on Gemma 3 270M (a second family: 262,144-token vocabulary, a BOS): greedy hybrid
equals transformers' generate with the same grammar mask, on the ten schemas, and every answer
parses and validates.

The target is transformers' Gemma in an embedded cloud; the draft is Gemma's own GGUF in
llama.cpp, masked by the grammar on the edge (`tandem generate --model gemma.gguf --draft-model
gemma.gguf`). The default SmolLM2 draft of the documented cross-vocabulary pair is checked too,
on a few schemas: its proposals are target tokens of the text it writes (edge/cross_vocab.py),
which the edge masks like any draft's and the cloud verifies under the mask, so the answer is
exact as well. This Gemma is the pretrained model: the test never asserts text, only identity to
the reference and validity under the schema.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from grammar_reference import SCHEMAS, hf_greedy_constrained, parse_answer

from common.grammar import json_schema_grammar
from common.wire import FinishReason
from edge.engine import GenerationRequest, Mode

pytestmark = pytest.mark.slow
NEW_TOKENS = 64


def _prompt(schema: dict) -> str:
    """A raw continuation (the base model has no chat turns) that asks for the object."""
    return f"A JSON object that matches the JSON Schema {json.dumps(schema, ensure_ascii=False)}:\n"


@pytest.fixture(scope="module")
def gemma_cloud(gemma_path):
    """(target, cloud): transformers Gemma in an embedded cloud."""
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from cloud.model import LoadOptions, TargetModel

    target = TargetModel.load(str(gemma_path), LoadOptions(device="cpu", threads=1))
    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=target) as cloud:
        yield target, cloud


async def _answers(address, drafter, prompts_and_grammars, target_tokenizer=None):
    from edge.client import CloudClient
    from edge.engine import EdgeEngine
    from edge.speculation_config import SpeculationConfig

    client = CloudClient(address)
    # Lock-step blocks of a fixed length: every answer is drafted and verified (the adaptive
    # policy could let the cloud decode alone, which would not exercise verification).
    engine = EdgeEngine(drafter, client, SpeculationConfig(draft_tokens=6, max_in_flight=1, adaptive=False),
                        target_tokenizer=target_tokenizer)
    try:
        await engine.connect()
        assert engine.drafter.fingerprint == engine.cloud_info.tokenizer_fingerprint  # target ids either way
        return [await engine.generate_to_end(GenerationRequest(prompt, NEW_TOKENS, grammar=grammar), Mode.HYBRID)
                for prompt, grammar in prompts_and_grammars]
    finally:
        await engine.close()
        await client.close()


def _exact_and_valid(target, generations, prompts_and_grammars, schemas) -> None:
    """Each answer is the target's constrained greedy answer, ended by itself, valid; and drafts were verified."""
    drafted = sum(g.stats.drafted for g in generations)
    accepted = sum(g.stats.accepted for g in generations)
    tokens = sum(len(g.token_ids) for g in generations)
    print(f"\n{len(generations)} answers, {tokens} tokens: {accepted}/{drafted} drafts accepted")
    assert accepted > 0
    for generation, (prompt, grammar), schema in zip(generations, prompts_and_grammars, schemas):
        assert generation.token_ids == hf_greedy_constrained(target, prompt, NEW_TOKENS, grammar), schema
        assert generation.finish_reason == FinishReason.STOP, schema
        text = b"".join(target.token_bytes(t) for t in generation.token_ids
                        if t not in target.eos_token_ids).decode()
        parse_answer(text, schema)


def test_gemma_ten_schemas_exact_and_valid(gemma_cloud, gemma_path):
    from edge.llama_drafter import LlamaDrafter

    target, cloud = gemma_cloud
    work = [(list(target.text.hf(_prompt(s))["input_ids"]), json_schema_grammar(s)) for s in SCHEMAS]
    assert all(prompt[0] == target.special.bos_token_id for prompt, _ in work)  # Gemma needs its BOS
    drafter = LlamaDrafter(gemma_path, n_ctx=1024, threads=1)
    try:
        generations = asyncio.run(_answers(cloud.address, drafter, work))
    finally:
        drafter.close()
    _exact_and_valid(target, generations, work, SCHEMAS)


CROSS_SCHEMAS = [SCHEMAS[0], SCHEMAS[5], SCHEMAS[9]]  # flat, nested, CJK and escapes


def test_gemma_with_the_smollm2_draft_under_a_schema(gemma_cloud, gemma_path):
    from edge.llama_drafter import LlamaDrafter
    from edge.tokenizer import load_tokenizer

    target, cloud = gemma_cloud
    work = [(list(target.text.hf(_prompt(s))["input_ids"]), json_schema_grammar(s)) for s in CROSS_SCHEMAS]
    drafter = LlamaDrafter(None, n_ctx=1024, threads=1)
    try:
        generations = asyncio.run(_answers(cloud.address, drafter, work, lambda: load_tokenizer(gemma_path)))
    finally:
        drafter.close()
    _exact_and_valid(target, generations, work, CROSS_SCHEMAS)
