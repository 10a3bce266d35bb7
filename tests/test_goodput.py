"""Goodput shaping (cloud/goodput.py): when the cloud caps blocks, and that a cap never changes an output."""

from __future__ import annotations

import asyncio

import pytest

from cloud.goodput import GoodputShaper, best_block, expected_tokens
from edge.draft_length import DraftLengthPolicy

# One CPU core, default target (ENVIRONMENT.md): ~50 ms per pass plus ~3.6 ms per token.
CPU = lambda tokens: 0.05 + 0.0036 * tokens  # noqa: E731
GPU = lambda tokens: 0.02 + 0.000002 * tokens  # noqa: E731 - per-token work all but free


def loaded(shaper: GoodputShaper, longest: int = 8, alpha_hits: int = 9) -> GoodputShaper:
    for _ in range(40):
        shaper.observe_verdict(longest, alpha_hits if alpha_hits < longest else longest)
        shaper.observe_pass(0.2, 0.0)  # back to back: busy
    return shaper


def test_best_block_trades_committed_tokens_against_pass_time():
    assert expected_tokens(0.9, 0) == pytest.approx(1.0)
    many = best_block(0.9, sessions=16, other_tokens=0, step_s=CPU, most=16)
    one = best_block(0.9, sessions=1, other_tokens=0, step_s=CPU, most=16)
    assert many <= 4 < 10 <= one  # many sessions on a CPU: short blocks; one session: long ones
    assert best_block(0.9, sessions=16, other_tokens=0, step_s=GPU, most=16) == 16
    assert best_block(0.5, 16, 0, CPU, 16) < many  # a poorer draft: shorter still


def test_the_cap_is_sent_only_under_load():
    shaper = loaded(GoodputShaper(), longest=8, alpha_hits=7)
    cap = shaper.cap(verifying=16, other_tokens=0, step_s=CPU)
    assert cap is not None and 1 <= cap < 8
    assert shaper.cap(verifying=1, other_tokens=0, step_s=CPU) is None  # a single user keeps today's speed
    assert shaper.cap(verifying=16, other_tokens=0, step_s=GPU) is None  # the best is what edges send already
    assert shaper.cap(verifying=16, other_tokens=0, step_s=lambda n: None) is None  # nothing measured yet
    idle = GoodputShaper()
    for _ in range(40):
        idle.observe_verdict(8, 7)
        idle.observe_pass(0.05, 0.5)  # the model waits for blocks most of the time: not loaded
    assert idle.busy < 0.75 and idle.cap(16, 0, CPU) is None
    assert loaded(GoodputShaper(enabled=False)).cap(16, 0, CPU) is None
    assert GoodputShaper(fixed_cap=3).cap(1, 0, CPU) == 3


def test_a_cap_holds_while_the_load_does_and_lifts_after():
    """Capped edges send short blocks; that must not make the cap lift itself (the uncapped length is held)."""
    shaper = loaded(GoodputShaper(), longest=8, alpha_hits=7)
    cap = shaper.cap(16, 0, CPU)
    for _ in range(200):  # edges obey: blocks of `cap` drafts
        shaper.observe_verdict(cap, cap - 1)
        shaper.observe_pass(0.2, 0.0)
        assert shaper.cap(16, 0, CPU) is not None
    assert shaper.cap(1, 0, CPU) is None  # the load is gone: no cap
    for _ in range(60):  # uncapped again, the reference follows what edges send
        shaper.observe_verdict(8, 7)
    assert shaper.cap(16, 0, CPU) == cap


def test_the_edge_holds_blocks_to_the_cap_and_lets_go_after():
    policy = DraftLengthPolicy(max_tokens=12, max_in_flight=2)
    free = policy.block_tokens
    policy.observe_cap(2)
    assert policy.block_tokens <= 2 < free
    policy.observe_cap(None)
    assert policy.block_tokens == free
    fixed = DraftLengthPolicy(max_tokens=12, fixed_lengths=True)
    fixed.observe_cap(2)
    assert fixed.block_tokens == 12  # sparse-q sampling: a block's end changes the sample, so no cap


PROMPTS = ["The quick brown fox", "def fibonacci(n):", "Once upon a time"]


@pytest.fixture(scope="module")
def float64_target(tiny_models):
    from cloud.model import LoadOptions, TargetModel

    return TargetModel.load(str(tiny_models.target_dir), LoadOptions(device="cpu", dtype="float64", threads=1))


def test_shaping_never_changes_an_output(float64_target, tiny_drafter):
    """float64: three hybrid sessions at once under a cap of 2 drafts per block give, token for token,
    what each gives alone on a cloud that never caps; and the cap really shortened the blocks."""
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from edge.client import CloudClient
    from edge.engine import EdgeEngine, GenerationRequest, Mode

    drafters = [tiny_drafter(name) for name in ("noisy", "exact", "wild")]

    async def run(address, pairs):
        async def one(drafter, prompt):
            client = CloudClient(address)
            try:
                engine = EdgeEngine(drafter, client)
                await engine.connect()
                return await engine.generate_to_end(GenerationRequest(drafter.tokenize(prompt), 32), Mode.HYBRID)
            finally:
                await client.close()

        return await asyncio.gather(*(one(d, p) for d, p in pairs))

    def cloud(**config):
        return EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0, **config), model=float64_target)

    with cloud(draft_cap=2) as capped:
        together = asyncio.run(run(capped.address, list(zip(drafters, PROMPTS))))
        assert capped.running.metrics.registry.get_sample_value("tandem_goodput_draft_cap") == 2
    with cloud(goodput_shaping=False) as free:
        alone = [asyncio.run(run(free.address, [(d, p)]))[0] for d, p in zip(drafters, PROMPTS)]
        assert free.running.metrics.registry.get_sample_value("tandem_goodput_draft_cap") == 0
    for shaped, own in zip(together, alone):
        assert shaped.token_ids == own.token_ids
    # After the first verdict (up to 4 blocks may be in flight before it).
    capped_blocks = [d for g in together for d, _ in g.stats.verified_blocks[4:]]
    free_blocks = [d for g in alone for d, _ in g.stats.verified_blocks]
    assert capped_blocks and max(capped_blocks) <= 2 < max(free_blocks)


def test_a_single_session_on_an_idle_cloud_is_never_capped(float64_target, tiny_drafter):
    """Today's speed for one user: with shaping on, no verdict of a lone session carries a cap."""
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from edge.client import CloudClient
    from edge.engine import EdgeEngine, GenerationRequest, Mode

    drafter = tiny_drafter("noisy")

    async def one(address):
        client = CloudClient(address)
        try:
            engine = EdgeEngine(drafter, client)
            await engine.connect()
            return await engine.generate_to_end(GenerationRequest(drafter.tokenize(PROMPTS[0]), 32), Mode.HYBRID)
        finally:
            await client.close()

    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=float64_target) as cloud:
        assert cloud.config.goodput_shaping
        generation = asyncio.run(one(cloud.address))
        assert cloud.running.metrics.registry.get_sample_value("tandem_goodput_draft_cap") == 0
    assert generation.stats.policy["cloud_cap"] is None and len(generation.stats.verified_blocks) > 1
