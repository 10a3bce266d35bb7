"""The same seed, prompt and parameters give the same tokens, run after run, in every mode.

Randomness is keyed by (seed, position), the draft model's evaluation follows a fixed
recipe, and pipelined blocks verify the same positions as lock-step ones: so the output is
a function of seed and prompt, not of timing, of what ran before, or of pipelining depth.
"""

from __future__ import annotations

import asyncio

import pytest
from test_sampled_exact import generate_many

from common.wire import DraftMode, SamplingParams
from edge.engine import EdgeEngine, GenerationRequest, Mode

PROMPT = "Once upon a time"
OTHER_PROMPT = "def add(a, b):"
SEEDS = [11, 12]
SAMPLING = dict(temperature=1.0, top_k=0, top_p=0.95, max_new_tokens=24)

CONFIGS = {
    "hybrid ids, lock-step": dict(draft_mode=DraftMode.TOKEN_IDS, draft_tokens=4, max_in_flight=1),
    "hybrid ids, pipelined": dict(draft_mode=DraftMode.TOKEN_IDS, draft_tokens=4, max_in_flight=3),
    "hybrid sparse, lock-step": dict(draft_mode=DraftMode.SPARSE_Q, draft_tokens=4, max_in_flight=1),
    "hybrid sparse, pipelined": dict(draft_mode=DraftMode.SPARSE_Q, draft_tokens=4, max_in_flight=3),
    "cloud": dict(mode=Mode.CLOUD),
    "edge": dict(mode=Mode.EDGE),
}


@pytest.fixture(scope="module")
def outputs(tiny_cloud, tiny_drafter):
    """Each configuration run twice per seed, with another prompt run in between.

    The run in between leaves a different KV cache in the draft model and other sessions in
    the cloud, so the second run starts from another state than the first.
    """
    drafter = tiny_drafter("noisy")
    prompt, other = drafter.tokenize(PROMPT), drafter.tokenize(OTHER_PROMPT)

    async def both_runs(config):
        first = await generate_many(tiny_cloud.address, drafter, prompt, SEEDS, **SAMPLING, **config)
        await generate_many(tiny_cloud.address, drafter, other, [SEEDS[0]], **SAMPLING, **config)
        second = await generate_many(tiny_cloud.address, drafter, prompt, SEEDS, **SAMPLING, **config)
        return first, second

    return {name: asyncio.run(both_runs(config)) for name, config in CONFIGS.items()}


@pytest.mark.parametrize("name", CONFIGS)
def test_same_seed_gives_the_same_tokens_run_after_run(outputs, name):
    first, second = outputs[name]
    assert [run.token_ids for run in first] == [run.token_ids for run in second]
    assert all(len(run.token_ids) == SAMPLING["max_new_tokens"] for run in first)
    assert first[0].token_ids != first[1].token_ids  # and the seed matters
    if name.startswith("hybrid"):
        blocks = [block for run in first + second for block in run.verified_blocks if block[0]]
        assert any(accepted < drafted for drafted, accepted in blocks)  # rejections really happened


def test_pipelining_depth_does_not_change_the_output(outputs):
    for wire in ("ids", "sparse"):
        lock_step, pipelined = outputs[f"hybrid {wire}, lock-step"][0], outputs[f"hybrid {wire}, pipelined"][0]
        assert [run.token_ids for run in lock_step] == [run.token_ids for run in pipelined]


def test_ids_mode_gives_the_cloud_models_own_sample(outputs):
    """Ids-only mode commits the target's keyed sample at every position: cloud-only output."""
    hybrid, cloud = outputs["hybrid ids, lock-step"][0], outputs["cloud"][0]
    assert [run.token_ids for run in hybrid] == [run.token_ids for run in cloud]


def test_seed_zero_is_a_seed_and_no_seed_draws_a_fresh_one():
    engine = EdgeEngine(drafter=None, client=None)
    assert engine.with_seed(GenerationRequest([1], sampling=SamplingParams(1.0, seed=0))).sampling.seed == 0
    unseeded = GenerationRequest([1], sampling=SamplingParams(1.0))
    seeds = {engine.with_seed(unseeded).sampling.seed for _ in range(5)}
    assert None not in seeds and len(seeds) == 5
