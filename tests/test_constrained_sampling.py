"""Sampled hybrid output under a grammar and penalties follows the target's exact served
distribution: the joint distribution of the first two tokens, p(t1) p(t2 | t1), where each p is
the target's logits (full forward) penalized (common.sampling.penalize), masked by the grammar,
then temperature and top-k. Pearson's chi-square at ALPHA with its power against two plausible
bugs (the adjustments ignored at verified positions; the draft's distribution committed)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from stats import assert_pairs_follow

from common.grammar import GrammarMask, json_schema_grammar, llg_tokenizer
from common.sampling import logits_to_probs
from common.wire import DraftMode, SamplingParams
from edge.client import CloudClient
from edge.engine import EdgeEngine, Generation, GenerationRequest, Mode
from edge.speculation_config import SpeculationConfig

PROMPT = 'She said "hello" and "the'
TEMPERATURE, TOP_K = 1.0, 4
SAMPLES = 1000
# Penalties that move the first token (the prompt's tokens are penalized); the second token's
# candidates appear nowhere before it, so the bias below is what moves it.
ADJUST = dict(presence_penalty=2.0, frequency_penalty=2.0, repetition_penalty=1.5)


def _sampling(seed: int, bias) -> SamplingParams:
    return SamplingParams(TEMPERATURE, TOP_K, 1.0, seed, logit_bias=bias, **ADJUST)


async def generate_many(address, drafter, prompt, seeds, grammar, bias, draft_mode) -> list[Generation]:
    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, SpeculationConfig(draft_tokens=2, adaptive=False))
        await engine.connect()
        runs = []
        for seed in seeds:
            generation = Generation(Mode.HYBRID)
            request = GenerationRequest(prompt, 3, _sampling(seed, bias), draft_mode=draft_mode, grammar=grammar)
            async for _ in engine.generate(request, Mode.HYBRID, generation):
                pass
            runs.append(generation)
        return runs
    finally:
        await client.close()


def _logits(target, ids):
    with torch.inference_mode():
        return target.model(torch.tensor([ids], device=target.device)).logits[0, -1].float().cpu().numpy()


@pytest.fixture(scope="module")
def reference(tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    grammar = json_schema_grammar({"type": "string"})  # a JSON string: many first and second tokens
    mask = GrammarMask(grammar, llg_tokenizer(tiny_target.text, tiny_target.vocab_size), tiny_target.vocab_size)
    plain = SamplingParams(TEMPERATURE, TOP_K)

    def served(logits, answer, sampling):
        return logits_to_probs(mask.masked_after(answer, sampling.penalize(logits, prompt, answer)), TEMPERATURE, TOP_K)

    # A bias against the likeliest second token after the likeliest first one.
    t1 = int(np.argmax(served(_logits(tiny_target, prompt), [], plain)))
    t2 = int(np.argmax(served(_logits(tiny_target, [*prompt, t1]), [t1], plain)))
    bias = ((t2, -2.0),)
    sampling = _sampling(0, bias)
    p1 = served(_logits(tiny_target, prompt), [], sampling)
    cells, exact, ignored, draft_output = [], [], [], []
    for t1 in np.flatnonzero(p1):
        logits = _logits(tiny_target, [*prompt, int(t1)])
        p2 = served(logits, [int(t1)], sampling)
        p2_plain = served(logits, [int(t1)], plain)  # the bug: adjustments only at the first token
        q2 = served(drafter.next_logits([*prompt, int(t1)]), [int(t1)], sampling)
        for t2 in np.flatnonzero((p2 > 0) | (p2_plain > 0) | (q2 > 0)):
            cells.append((int(t1), int(t2)))
            exact.append(p1[t1] * p2[t2])
            ignored.append(p1[t1] * p2_plain[t2])
            draft_output.append(p1[t1] * q2[t2])
    bugs = {"adjustments ignored at verified positions": np.array(ignored), "draft output": np.array(draft_output)}
    return prompt, grammar, bias, cells, np.array(exact), bugs


@pytest.mark.parametrize("draft_mode", [DraftMode.TOKEN_IDS, DraftMode.SPARSE_Q])
def test_first_two_tokens_follow_the_served_distribution(tiny_cloud, tiny_drafter, reference, draft_mode):
    prompt, grammar, bias, cells, exact, bugs = reference
    runs = asyncio.run(generate_many(tiny_cloud.address, tiny_drafter("noisy"), prompt, range(1, SAMPLES + 1),
                                     grammar, bias, draft_mode))
    first_blocks = [run.stats.verified_blocks[0] for run in runs]
    assert all(drafted == 1 for drafted, _ in first_blocks)  # t2 always came from a verified draft
    rejected = sum(accepted == 0 for _, accepted in first_blocks)
    assert 0.05 * SAMPLES < rejected < 0.95 * SAMPLES, rejected  # both outcomes happen
    assert_pairs_follow([run.token_ids[:2] for run in runs], cells, exact, bugs)
