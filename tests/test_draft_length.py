"""The draft-length policy as a pure function of what it observes (no model, no network)."""

from __future__ import annotations

import random

import pytest

from common.errors import InvalidArgument
from edge.draft_length import (DRAFT_TIME_PRIOR_S, EMA_WEIGHT, PASS_TIME_PRIOR_S, DraftLengthPolicy,
                               best_block_length, expected_tokens)


def feed(policy: DraftLengthPolicy, alpha: float, verdicts: int, draft_s: float, round_trip_s: float,
         seed: int = 0) -> None:
    """Simulates `verdicts` rounds where each draft is accepted with probability alpha."""
    rng = random.Random(seed)
    for _ in range(verdicts):
        for _ in range(policy.block_tokens):
            policy.observe_draft(confidence=1.0, seconds=draft_s)
        drafted = policy.block_tokens
        accepted = 0
        while accepted < drafted and rng.random() < alpha:
            accepted += 1
        policy.observe_verdict(drafted, accepted, round_trip_s)


def test_expected_tokens_limits():
    assert expected_tokens(1e-9, 7) == pytest.approx(1.0)  # the correction token only
    assert expected_tokens(1 - 1e-9, 7) == pytest.approx(8.0, rel=1e-6)  # all drafts plus the bonus
    rng = random.Random(1)
    alpha, k, trials = 0.7, 5, 20_000
    simulated = 0
    for _ in range(trials):
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        simulated += accepted + 1
    assert simulated / trials == pytest.approx(expected_tokens(alpha, k), rel=0.02)


@pytest.mark.parametrize("alpha", [0.3, 0.6, 0.9])
def test_acceptance_estimate_recovers_the_true_rate(alpha):
    """Censored blocks (drafts after a rejection are never judged) must not bias the estimate."""
    estimates = []
    for seed in range(20):
        policy = DraftLengthPolicy(max_tokens=6, max_in_flight=1)
        feed(policy, alpha, verdicts=60, draft_s=0.01, round_trip_s=0.05, seed=seed)
        estimates.append(policy.acceptance)
    assert sum(estimates) / len(estimates) == pytest.approx(alpha, abs=0.06)


def test_good_drafts_get_longer_blocks_than_poor_ones():
    good, poor = DraftLengthPolicy(max_tokens=16), DraftLengthPolicy(max_tokens=16)
    feed(good, 0.95, verdicts=30, draft_s=0.012, round_trip_s=0.15)
    feed(poor, 0.3, verdicts=30, draft_s=0.012, round_trip_s=0.15)
    assert good.block_tokens > poor.block_tokens
    assert poor.block_tokens <= 3
    assert good.block_tokens >= 12


def test_longer_round_trips_lengthen_blocks_and_deepen_the_pipeline():
    ks, depths = [], []
    for round_trip_s in (0.01, 0.05, 0.2, 0.8):
        policy = DraftLengthPolicy(max_tokens=32, max_in_flight=8)
        feed(policy, 0.75, verdicts=30, draft_s=0.012, round_trip_s=round_trip_s)
        ks.append(policy.block_tokens)
        depths.append(policy.depth)
    assert ks == sorted(ks) and ks[0] < ks[-1]
    assert depths == sorted(depths) and depths[0] < depths[-1]


def test_depth_covers_the_round_trip_within_the_cap():
    policy = DraftLengthPolicy(max_tokens=8, max_in_flight=3)
    for _ in range(20):
        policy.observe_draft(1.0, 0.01)
        policy.observe_verdict(8, 8, 0.05)
    # Blocks of 8 take 80 ms to draft: one more block in flight covers a 50 ms round trip.
    assert (policy.block_tokens, policy.depth) == (8, 2)
    for _ in range(20):
        policy.observe_verdict(8, 8, 1.0)
    assert policy.depth == 3  # a 1 s round trip would want more, the cap holds


def test_block_length_maximizes_expected_rate():
    alpha, t_d, rtt = 0.8, 0.01, 0.1
    k = best_block_length(alpha, t_d, rtt, 1, 20)
    rate = [expected_tokens(alpha, j) / (j * t_d + rtt) for j in range(1, 21)]
    assert rate[k - 1] == max(rate)
    assert 1 < k < 20


def test_low_confidence_cuts_the_block_until_the_next_one():
    policy = DraftLengthPolicy(max_tokens=8, min_confidence=0.3)
    policy.observe_draft(0.9)
    assert not policy.cut_requested
    policy.observe_draft(0.2)
    assert policy.cut_requested
    policy.start_block()
    assert not policy.cut_requested


def test_fixed_policy_ignores_measurements():
    policy = DraftLengthPolicy(max_tokens=5, max_in_flight=3, adaptive=False)
    feed(policy, 0.1, verdicts=20, draft_s=0.05, round_trip_s=2.0)
    assert (policy.block_tokens, policy.depth) == (5, 3)
    assert policy.snapshot()["acceptance"] < 0.3  # still measured, for stats


@pytest.mark.parametrize("kwargs", [dict(max_tokens=0), dict(max_tokens=4, min_tokens=5),
                                    dict(max_tokens=4, max_in_flight=0)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(InvalidArgument):
        DraftLengthPolicy(**kwargs)


def test_fixed_lengths_adapt_only_the_depth():
    """Sparse-q sampling keeps block lengths (its output depends on them); depth still adapts."""
    policy = DraftLengthPolicy(8, max_in_flight=4, fixed_lengths=True)
    for _ in range(20):
        policy.observe_draft(0.9, 0.01)
        policy.observe_verdict(8, 1, 0.3)  # poor acceptance, long round trips
    assert policy.block_tokens == 8
    assert policy.depth > 1


def test_the_link_s_round_trip_plus_a_pass_stands_in_until_a_verdict_is_timed():
    """The acknowledgement times only the link; a verdict also waits for a forward pass."""
    policy = DraftLengthPolicy(max_tokens=32, max_in_flight=1)
    policy.observe_link(0.02)
    assert policy.round_trip_s == pytest.approx(0.02 + PASS_TIME_PRIOR_S)
    assert policy.block_tokens == best_block_length(policy.acceptance, DRAFT_TIME_PRIOR_S, 0.02 + PASS_TIME_PRIOR_S,
                                                    1, 32)
    assert policy.block_tokens > best_block_length(policy.acceptance, DRAFT_TIME_PRIOR_S, 0.02, 1, 32)
    feed(policy, 0.9, verdicts=1, draft_s=0.012, round_trip_s=0.3)
    measured = (1 - EMA_WEIGHT) * (0.02 + PASS_TIME_PRIOR_S) + EMA_WEIGHT * 0.3
    assert policy.round_trip_s == pytest.approx(measured)
    policy.observe_link(0.5)  # only the first estimate comes from the link
    assert policy.round_trip_s == pytest.approx(measured)
