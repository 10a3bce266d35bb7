"""Log-probabilities come from the verification pass and are the target's, as served: for every
committed token, log_softmax of the target's logits at its position (after the grammar's mask, over
the temperature) from a plain transformers forward pass over prompt + answer."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from grammar_reference import SCHEMAS
from engine_run import generate_through as _generate

from common.grammar import GrammarMask, json_schema_grammar, llg_tokenizer
from common.sampling import served_logprobs, top_tokens
from common.wire import SamplingParams
from edge.engine import GenerationRequest, Mode

PROMPT = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"


def reference_logits(target, ids: list[int]) -> np.ndarray:  # [len(ids), vocab]
    import torch

    with torch.inference_mode():
        return target.model(torch.tensor([ids], device=target.device)).logits[0].float().cpu().numpy()


def check(target, prompt, generation, n, temperature=0.0, grammar=None):
    ids = generation.token_ids
    assert sorted(generation.logprobs) == list(range(len(ids)))
    rows = reference_logits(target, prompt + ids)[len(prompt) - 1: len(prompt) - 1 + len(ids)]
    mask = GrammarMask(grammar, llg_tokenizer(target.text, target.vocab_size), target.vocab_size) if grammar else None
    for i, (token, row) in enumerate(zip(ids, rows)):
        if mask is not None:
            row = mask.masked_after(ids[:i], row)
        expected = served_logprobs(row, temperature)
        got = generation.logprobs[i]
        assert got.logprob == pytest.approx(expected[token], abs=2e-3)
        assert len(got.top_ids) == len(got.top_logprobs) <= n
        assert np.allclose(got.top_logprobs, expected[got.top_ids], atol=2e-3)
        # The top list is the n most likely (up to near-ties the batching may reorder).
        if n:
            assert min(got.top_logprobs) >= expected[top_tokens(expected, n)].min() - 2e-3
        if temperature == 0 and n:
            assert got.top_ids[0] == token or np.isclose(got.top_logprobs[0], got.logprob, atol=2e-3)


@pytest.mark.parametrize("mode", [Mode.HYBRID, Mode.CLOUD])
@pytest.mark.parametrize("n", [0, 5, 20])
def test_greedy_logprobs_are_the_targets(tiny_cloud, tiny_target, tiny_drafter, mode, n):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    generation = asyncio.run(_generate(tiny_cloud.address, drafter, GenerationRequest(prompt, 16, logprobs=n), mode,
                                       draft_tokens=4, adaptive=False))
    check(tiny_target, prompt, generation, n)


def test_sampled_logprobs_under_a_grammar(tiny_cloud, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    grammar = json_schema_grammar(SCHEMAS[6])
    request = GenerationRequest(prompt, 16, SamplingParams(0.7, seed=3), grammar=grammar, logprobs=3)
    generation = asyncio.run(_generate(tiny_cloud.address, drafter, request, draft_tokens=4, adaptive=False))
    check(tiny_target, prompt, generation, 3, temperature=0.7, grammar=grammar)


def test_no_logprobs_unless_asked(tiny_cloud, tiny_drafter):
    drafter = tiny_drafter("noisy")
    generation = asyncio.run(_generate(tiny_cloud.address, drafter, GenerationRequest(drafter.tokenize(PROMPT), 8)))
    assert generation.logprobs == {}
