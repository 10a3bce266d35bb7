"""Structured output stays exact: with a grammar's mask (common/grammar.py), greedy hybrid and
cloud-only answers equal transformers' generate with the same mask as a logits processor, with
noisy drafts so rejections (and the grammar's rollback) really happen."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np
import pytest
from grammar_reference import SCHEMAS, hf_greedy_constrained
from engine_run import generate_through as _generate

from common.errors import InvalidArgument
from common.grammar import GrammarMask, json_object_grammar, json_schema_grammar, llg_tokenizer
from common.wire import FinishReason
from edge.engine import GenerationRequest, Mode

PROMPT = "<|im_start|>user\nAnswer in JSON.<|im_end|>\n<|im_start|>assistant\n"
NEW_TOKENS = 24


def test_mask_follows_and_rolls_back(tiny_target):
    grammar = json_schema_grammar(SCHEMAS[0])
    mask = GrammarMask(grammar, llg_tokenizer(tiny_target.text, tiny_target.vocab_size), tiny_target.vocab_size)
    ids = tiny_target.tokenize('{"name": "Bob", "age": 42}')
    assert mask.sync(ids) and set(np.flatnonzero(mask.allowed())) <= set(tiny_target.eos_token_ids)
    assert mask.sync(ids[:3]) and mask.consumed == ids[:3]  # rolled back
    assert not mask.allowed()[tiny_target.eos_token_ids].any()  # mid-object: no end
    assert not mask.sync([*ids[:3], *tiny_target.tokenize("}}}")])  # outside the grammar
    assert mask.sync(ids) and mask.consumed == ids  # and back on track
    end = [tiny_target.eos_token_ids[0]]
    assert mask.sync([*ids, *end]) and not mask.allowed().any()  # the end token ends the document
    assert not mask.sync([*ids, *end, *end])  # nothing follows it
    assert mask.sync(ids[:5]) and mask.consumed == ids[:5]  # and it rolls back like any token
    assert mask.sync(ids) and mask.consumed == ids  # the matcher itself was rolled back exactly


@pytest.mark.parametrize("schema", [{"type": "objectx"}, {"type": "object", "properties": 3}, "nope"])
def test_bad_schema_names_the_parameter(schema):
    with pytest.raises(InvalidArgument, match="response_format.json_schema.schema"):
        json_schema_grammar(schema)


@pytest.mark.parametrize("draft,draft_tokens,max_in_flight", [("exact", 4, 1), ("noisy", 4, 2), ("wild", 3, 3)])
@pytest.mark.parametrize("schema_index", range(len(SCHEMAS)))
def test_greedy_hybrid_equals_constrained_generate(tiny_cloud, tiny_target, tiny_drafter, draft, draft_tokens,
                                                   max_in_flight, schema_index):
    drafter = tiny_drafter(draft)
    schema = SCHEMAS[schema_index]
    grammar = json_schema_grammar(schema)
    prompt = drafter.tokenize(PROMPT)
    expected = hf_greedy_constrained(tiny_target, prompt, NEW_TOKENS, grammar)
    request = GenerationRequest(prompt, NEW_TOKENS, grammar=grammar)
    hybrid = asyncio.run(_generate(tiny_cloud.address, drafter, request, draft_tokens=draft_tokens,
                                   max_in_flight=max_in_flight, adaptive=False))
    assert hybrid.token_ids == expected
    # A random tiny model rarely closes its object within the budget: then the answer must say
    # "length", never "stop"; a stop is a complete document.
    text = b"".join(tiny_target.token_bytes(t) for t in expected).decode("utf-8", errors="replace")
    if hybrid.finish_reason == FinishReason.STOP:
        json.loads(text)
    else:
        assert hybrid.finish_reason == FinishReason.LENGTH and len(expected) == NEW_TOKENS


@pytest.mark.parametrize("schema_index", [0, 5, 9])
def test_cloud_mode_equals_constrained_generate(tiny_cloud, tiny_target, tiny_drafter, schema_index):
    drafter = tiny_drafter("noisy")
    grammar = json_schema_grammar(SCHEMAS[schema_index])
    prompt = drafter.tokenize(PROMPT)
    generation = asyncio.run(_generate(tiny_cloud.address, drafter, GenerationRequest(prompt, NEW_TOKENS, grammar=grammar),
                                       mode=Mode.CLOUD))
    assert generation.token_ids == hf_greedy_constrained(tiny_target, prompt, NEW_TOKENS, grammar)


def test_json_object_mode_is_exact(tiny_cloud, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    grammar = json_object_grammar()
    prompt = drafter.tokenize(PROMPT)
    generation = asyncio.run(_generate(tiny_cloud.address, drafter, GenerationRequest(prompt, NEW_TOKENS, grammar=grammar),
                                       draft_tokens=4, adaptive=False))
    assert generation.token_ids == hf_greedy_constrained(tiny_target, prompt, NEW_TOKENS, grammar)
    assert tiny_target.token_bytes(generation.token_ids[0]).startswith(b"{")


def test_rejections_happen_and_the_draft_mask_keeps_drafts_in(tiny_cloud, tiny_target, tiny_drafter):
    """A noisy draft is rejected at the first draft and later (the grammar rolls back), whole blocks
    pass too; masking the draft with the grammar does not lower the tokens per round."""
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    outcomes, per_round = Counter(), {}
    for mask_draft in (True, False):
        tokens = rounds = 0
        for schema in SCHEMAS:
            grammar = json_schema_grammar(schema)
            generation = asyncio.run(_generate(tiny_cloud.address, drafter, GenerationRequest(prompt, NEW_TOKENS, grammar=grammar),
                                               draft_tokens=4, max_in_flight=1, adaptive=False, mask_draft=mask_draft))
            assert generation.token_ids == hf_greedy_constrained(tiny_target, prompt, NEW_TOKENS, grammar)
            for drafted, accepted in generation.stats.verified_blocks:
                if drafted and mask_draft:
                    outcomes["none" if accepted == 0 else "all" if accepted == drafted else "some"] += 1
                if drafted:  # tokens per round that verified drafts (not one where the draft still prefilled)
                    tokens += accepted + 1
                    rounds += 1
        per_round[mask_draft] = tokens / rounds
    assert outcomes["none"] > 0 and outcomes["some"] > 0 and outcomes["all"] > 0
    assert per_round[True] >= per_round[False], per_round
