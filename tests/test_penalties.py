"""Penalties and logit_bias are applied to the target at every verified position as a function of
the tokens before it: greedy hybrid and cloud-only answers equal transformers' generate with the
same adjustment (and a grammar's mask) as a logits processor, with noisy drafts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from grammar_reference import SCHEMAS, hf_greedy_served
from engine_run import generate_through as _generate

from common.errors import InvalidArgument
from common.grammar import json_schema_grammar
from common.sampling import penalize
from common.wire import SamplingParams
from edge.engine import GenerationRequest, Mode

PROMPT = "The the the cat sat on the mat and the"
CASES = {
    "frequency": SamplingParams(frequency_penalty=1.5),
    "presence": SamplingParams(presence_penalty=2.0),
    "repetition": SamplingParams(repetition_penalty=1.8),
    "bias": SamplingParams(logit_bias=((13, 8.0), (30, -100.0))),
    "all": SamplingParams(frequency_penalty=0.7, presence_penalty=-0.5, repetition_penalty=1.3,
                          logit_bias=((100, 5.0),)),
}


def test_penalize_math():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = penalize(logits, [1], [0, 0, 2], frequency=0.5, presence=0.25, repetition=2.0, logit_bias=((3, 1.0),))
    # 0: seen (1.0 after repetition), counted twice; 1: prompt only (-4); 2: once (0.5 - 0.75); 3: bias.
    assert np.allclose(out, [1.0 - 1.0 - 0.25, -4.0, 0.5 - 0.5 - 0.25, 1.5])
    assert np.array_equal(penalize(logits, [1], [0]), logits)  # nothing asked: unchanged


@pytest.mark.parametrize("mode", [Mode.HYBRID, Mode.CLOUD])
@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_with_penalties_equals_generate(tiny_cloud, tiny_target, tiny_drafter, case, mode):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    sampling = CASES[case]
    generation = asyncio.run(_generate(tiny_cloud.address, drafter, GenerationRequest(prompt, 24, sampling), mode,
                                       draft_tokens=4, max_in_flight=2, adaptive=False))
    expected = hf_greedy_served(tiny_target, prompt, 24, sampling)
    assert generation.token_ids == expected
    if case in ("frequency", "presence", "repetition"):  # the penalty really changed the answer
        assert expected != hf_greedy_served(tiny_target, prompt, 24, SamplingParams())


def test_penalties_under_a_grammar(tiny_cloud, tiny_target, tiny_drafter):
    drafter = tiny_drafter("wild")
    prompt = drafter.tokenize(PROMPT)
    grammar = json_schema_grammar(SCHEMAS[2])
    sampling = CASES["all"]
    generation = asyncio.run(_generate(tiny_cloud.address, drafter, GenerationRequest(prompt, 24, sampling, grammar=grammar),
                                       draft_tokens=4, adaptive=False))
    assert generation.token_ids == hf_greedy_served(tiny_target, prompt, 24, sampling, grammar)


@pytest.mark.parametrize("sampling,phrase", [
    (SamplingParams(frequency_penalty=3.0), "frequency_penalty"),
    (SamplingParams(presence_penalty=-2.5), "presence_penalty"),
    (SamplingParams(repetition_penalty=-1.0), "repetition_penalty"),
    (SamplingParams(logit_bias=((10**7, 1.0),)), "logit_bias"),
    (SamplingParams(logit_bias=((5, 101.0),)), "logit_bias"),
])
def test_bad_penalties_are_invalid_arguments(tiny_cloud, tiny_drafter, sampling, phrase):
    drafter = tiny_drafter("noisy")
    with pytest.raises(InvalidArgument, match=phrase):
        asyncio.run(_generate(tiny_cloud.address, drafter, GenerationRequest(drafter.tokenize(PROMPT), 4, sampling),
                              Mode.CLOUD))
