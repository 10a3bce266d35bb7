"""What goes into a forward pass (cloud/pass_plan.py): pure rules, no model, thread or clock."""

from __future__ import annotations

import random

import pytest

from cloud.pass_plan import PassPlan, plan_pass
from cloud.scheduler import JobKind


def test_ready_work_goes_first_in_arrival_order_and_prompts_get_only_the_room_left():
    plan = plan_pass(ready=[5, 1, 1, 9], prefilling=[100, 30], max_tokens=24)
    assert plan == PassPlan(ready=4, chunks=(8,), tokens=24)  # 16 tokens of blocks, 8 of the first prompt


def test_a_block_that_does_not_fit_waits_and_is_not_overtaken():
    plan = plan_pass(ready=[10, 16, 3], prefilling=[50], max_tokens=24)
    assert plan == PassPlan(ready=1, chunks=(14,), tokens=24)  # the 3-token block waits behind the 16-token one


def test_a_first_block_larger_than_the_budget_runs_alone():
    assert plan_pass(ready=[40, 1], prefilling=[10], max_tokens=24) == PassPlan(1, (), 40)


def test_prompts_share_the_room_in_arrival_order_each_at_most_what_it_lacks():
    assert plan_pass(ready=[], prefilling=[3, 5, 100, 7], max_tokens=24) == PassPlan(0, (3, 5, 16), 24)
    assert plan_pass(ready=[24], prefilling=[3], max_tokens=24) == PassPlan(1, (), 24)  # no room: the prompt waits


def test_nothing_queued_plans_an_empty_pass():
    assert plan_pass([], [], 8) == PassPlan(0, (), 0)


@pytest.mark.parametrize("seed", range(200))
def test_random_queues_keep_the_budget_and_always_make_progress(seed):
    rng = random.Random(seed)
    max_tokens = rng.randint(1, 64)
    ready = [rng.randint(1, 80) for _ in range(rng.randint(0, 6))]
    prefilling = [rng.randint(1, 200) for _ in range(rng.randint(0, 4))]
    plan = plan_pass(ready, prefilling, max_tokens)
    taken = sum(ready[: plan.ready]) + sum(plan.chunks)
    assert plan.tokens == taken
    assert taken <= max_tokens or (plan.ready == 1 and ready[0] > max_tokens and not plan.chunks)
    assert (plan.ready or plan.chunks) if (ready or prefilling) else taken == 0  # never stuck
    assert all(0 < chunk <= left for chunk, left in zip(plan.chunks, prefilling))
    assert all(chunk == left for chunk, left in zip(plan.chunks[:-1], prefilling))  # only the last one is cut
    if plan.ready < len(ready):  # the next block did not fit
        assert plan.ready and ready[plan.ready] > max_tokens - sum(ready[: plan.ready])


def test_job_kinds_are_an_enum():
    assert {kind.name for kind in JobKind} == {"START", "GENERATE", "VERIFY", "CLOSE", "HINT", "CALL"}
