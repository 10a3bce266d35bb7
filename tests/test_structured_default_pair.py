"""Structured output on the real default pair: greedy hybrid equals transformers' generate with the
same grammar mask, on the ten schemas; every answer parses and validates; masking the draft with
the grammar does not lower tokens per round."""

from __future__ import annotations

import asyncio

import pytest
from grammar_reference import SCHEMAS, hf_greedy_constrained, parse_answer
from test_default_pair import default_pair  # noqa: F401 (the module-scoped fixture)
from test_speculative_exact import run_generation

from bench.schemas import schema_instruction
from common.grammar import json_schema_grammar
from common.wire import FinishReason
from edge.engine import GenerationRequest, Mode

pytestmark = pytest.mark.slow
NEW_TOKENS = 96


def _prompt(schema: dict) -> str:
    return f"<|im_start|>user\n{schema_instruction(schema)}<|im_end|>\n<|im_start|>assistant\n"


async def _run(address, drafter, prompt, grammar, mode=Mode.HYBRID, **config):
    from edge.client import CloudClient
    from edge.engine import EdgeEngine
    from edge.speculation_config import SpeculationConfig

    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, SpeculationConfig(**config))
        await engine.connect()
        return await engine.generate_to_end(GenerationRequest(prompt, NEW_TOKENS, grammar=grammar), mode)
    finally:
        await client.close()


def test_default_pair_ten_schemas_exact_and_valid(default_pair):  # noqa: F811
    cloud, target, drafter = default_pair
    per_round = {True: [0, 0], False: [0, 0]}  # mask_draft -> [tokens, rounds]
    for schema in SCHEMAS:
        grammar = json_schema_grammar(schema)
        prompt = drafter.tokenize(_prompt(schema))
        expected = hf_greedy_constrained(target, prompt, NEW_TOKENS, grammar)
        for mask_draft in (True, False):
            generation = asyncio.run(_run(cloud.address, drafter, prompt, grammar, draft_tokens=6,
                                          max_in_flight=1, adaptive=False, mask_draft=mask_draft,
                                          defer_draft_prefill=True))
            assert generation.token_ids == expected, schema
            # Rounds that verified drafts (a round without any, while the draft still prefills on
            # a loaded machine, says nothing about the drafts): tokens each committed.
            drafting = [accepted + 1 for drafted, accepted in generation.stats.verified_blocks if drafted]
            per_round[mask_draft][0] += sum(drafting)
            per_round[mask_draft][1] += len(drafting)
        assert generation.finish_reason == FinishReason.STOP, schema
        text = b"".join(target.token_bytes(t) for t in expected).decode()
        parse_answer(text, schema)
    masked, unmasked = (t / r for t, r in (per_round[True], per_round[False]))
    print(f"\ntokens per drafting round on the 10 schemas: draft masked {masked:.2f}, unmasked {unmasked:.2f}")
    assert masked >= unmasked


def test_default_pair_cloud_only_under_a_schema(default_pair):  # noqa: F811
    cloud, target, drafter = default_pair
    grammar = json_schema_grammar(SCHEMAS[5])
    prompt = drafter.tokenize(_prompt(SCHEMAS[5]))
    generation = asyncio.run(_run(cloud.address, drafter, prompt, grammar, mode=Mode.CLOUD))
    assert generation.token_ids == hf_greedy_constrained(target, prompt, NEW_TOKENS, grammar)
