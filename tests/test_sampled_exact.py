"""Sampled hybrid output follows the target's exact distribution, in both wire modes.

The draft is the `noisy` tiny model, so its q differs from the target's p (total variation
0.3-0.9 at the positions below) and drafts are really rejected. The reference is computed
directly from the target model's logits: the joint distribution of the first two sampled
tokens, p(t1) * p(t2 | t1), after the same temperature and top-k. Each seed is one
generation; the test is a fixed computation (the seeds are fixed), judged by Pearson's
chi-square at ALPHA = 1e-3 with an exact p-value, whose power against plausible bugs is
checked too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from stats import assert_pairs_follow

from common.sampling import logits_to_probs
from common.wire import DraftMode, FinishReason, SamplingParams
from edge.client import CloudClient
from edge.engine import EdgeEngine, Generation, GenerationRequest, Mode
from edge.speculation_config import SpeculationConfig

PROMPT = "Hello"
TEMPERATURE, TOP_K = 1.0, 3
SAMPLES = 1000


@dataclass
class Run:
    token_ids: list[int]
    verified_blocks: list[tuple[int, int]]
    finish_reason: FinishReason


async def generate_many(address, drafter, prompt, seeds, *, mode=Mode.HYBRID, draft_mode=DraftMode.TOKEN_IDS,
                        max_new_tokens=3, temperature=TEMPERATURE, top_k=TOP_K, top_p=1.0, stop_strings=(),
                        **config) -> list[Run]:
    """One generation per seed, over one connection and one draft model."""
    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, SpeculationConfig(**config))
        await engine.connect()
        runs = []
        for seed in seeds:
            request = GenerationRequest(prompt, max_new_tokens, SamplingParams(temperature, top_k, top_p, seed),
                                        draft_mode=draft_mode, stop_strings=list(stop_strings))
            generation = Generation(mode)
            async for _ in engine.generate(request, mode, generation):
                pass
            runs.append(Run(generation.token_ids, generation.stats.verified_blocks, generation.finish_reason))
        return runs
    finally:
        await client.close()


def target_probs(target, ids: list[int]) -> np.ndarray:
    """p after `ids`: the target model's own logits, full forward, then the sampling transform."""
    with torch.inference_mode():
        logits = target.model(torch.tensor([ids], device=target.device)).logits[0, -1].float().cpu().numpy()
    return logits_to_probs(logits, TEMPERATURE, TOP_K)


@pytest.fixture(scope="module")
def joint_reference(tiny_target, tiny_drafter):
    """Cells (t1, t2) with p(t1) p(t2|t1), and the distributions two plausible bugs would give."""
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    p1 = target_probs(tiny_target, prompt)
    cells, exact, draft_output, residual_from_p = [], [], [], []
    for t1 in np.flatnonzero(p1):
        context = [*prompt, int(t1)]
        p2 = target_probs(tiny_target, context)
        q2 = logits_to_probs(drafter.next_logits(context), TEMPERATURE, TOP_K)
        # The bug "on rejection, sample p" commits min(p, q), then p with the rejected mass.
        wrong_residual = np.minimum(p2, q2) + (1 - np.minimum(p2, q2).sum()) * p2
        for t2 in np.flatnonzero((p2 > 0) | (q2 > 0)):
            cells.append((int(t1), int(t2)))
            exact.append(p1[t1] * p2[t2])
            draft_output.append(p1[t1] * q2[t2])
            residual_from_p.append(p1[t1] * wrong_residual[t2])
    return prompt, cells, np.array(exact), {"draft output": np.array(draft_output),
                                            "residual drawn from p": np.array(residual_from_p)}


@pytest.mark.parametrize("draft_mode", [DraftMode.TOKEN_IDS, DraftMode.SPARSE_Q])
def test_first_two_sampled_tokens_follow_the_target_distribution(tiny_cloud, tiny_drafter, joint_reference,
                                                                 draft_mode):
    prompt, cells, exact, bugs = joint_reference
    # max_new_tokens=3 with 2-token blocks: t1 comes from the prefill, t2 from verifying a
    # drafted token (accepted, or recovered after a rejection), t3 is the bonus or a step.
    runs = asyncio.run(generate_many(tiny_cloud.address, tiny_drafter("noisy"), prompt, range(1, SAMPLES + 1),
                                     draft_mode=draft_mode, draft_tokens=2))
    assert all(len(run.token_ids) == 3 for run in runs)
    first_blocks = [run.verified_blocks[0] for run in runs]
    assert all(drafted == 1 for drafted, _ in first_blocks)  # t2 always came from a verified draft
    rejected = sum(accepted == 0 for _, accepted in first_blocks)
    assert 0.1 * SAMPLES < rejected < 0.9 * SAMPLES  # both outcomes happen, often

    assert_pairs_follow([run.token_ids[:2] for run in runs], cells, exact, bugs)
