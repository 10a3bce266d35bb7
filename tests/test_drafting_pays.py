"""The pure "does drafting pay" decision (edge/drafting_pays.py): no model, no thread, no clock."""

from __future__ import annotations

import dataclasses

import pytest

from edge.draft_length import expected_tokens
from edge.drafting_pays import (
    LASTING,
    MAX_SHADOW,
    MIN_SHADOW,
    MIN_VERDICTS,
    OFF_BELOW,
    ON_ABOVE,
    DraftingSwitch,
    PaysInputs,
    cloud_tokens_per_s,
    drafting_pays,
    hybrid_tokens_per_s,
)

# The default pair at 20 ms: SmolLM2 Q4_1 drafting at ~14 ms/token, the fp32 target ~60 ms a step.
GOOD = PaysInputs(acceptance=0.97, block_tokens=10, depth=3, draft_s=0.014, round_trip_s=0.14, verify_s=0.12,
                  cloud_step_s=0.06)


def test_lock_step_is_tokens_per_round_over_round_time():
    m = dataclasses.replace(GOOD, depth=1, acceptance=0.5, block_tokens=4)
    assert hybrid_tokens_per_s(m) == pytest.approx(expected_tokens(0.5, 4) / (4 * 0.014 + 0.14))


def test_pipelining_never_hurts_and_helps_a_good_draft():
    lock_step = hybrid_tokens_per_s(dataclasses.replace(GOOD, depth=1))
    assert hybrid_tokens_per_s(GOOD) > 1.3 * lock_step
    for alpha in (0.01, 0.3, 0.7, 0.99):
        m = dataclasses.replace(GOOD, acceptance=alpha)
        assert hybrid_tokens_per_s(m) >= hybrid_tokens_per_s(dataclasses.replace(m, depth=1)) - 1e-12


def test_a_verify_pass_slower_than_drafting_bounds_the_pipeline():
    slow_cloud = dataclasses.replace(GOOD, acceptance=0.995, verify_s=1.0, round_trip_s=1.02)
    assert hybrid_tokens_per_s(slow_cloud) <= expected_tokens(0.995, 10) / 1.0 + 1e-9


@pytest.mark.parametrize("field,worse", [("acceptance", 0.5), ("draft_s", 0.05), ("round_trip_s", 0.4)])
def test_hybrid_rate_falls_as_each_input_worsens(field, worse):
    assert hybrid_tokens_per_s(dataclasses.replace(GOOD, **{field: worse})) < hybrid_tokens_per_s(GOOD)


def test_the_default_pair_pays():
    assert hybrid_tokens_per_s(GOOD) > 2 * cloud_tokens_per_s(GOOD)
    assert drafting_pays(GOOD, drafting_now=True) and drafting_pays(GOOD, drafting_now=False)


@pytest.mark.parametrize("case", [
    dict(acceptance=0.01, block_tokens=1),  # a draft that agrees with nothing
    dict(draft_s=0.12, block_tokens=2, acceptance=0.8),  # a slow edge CPU
    dict(round_trip_s=1.0, acceptance=0.4, block_tokens=3),  # a long round trip, a middling draft
    dict(acceptance=0.5, block_tokens=2, cloud_step_s=0.02),  # a fast cloud step (a GPU)
])
def test_losing_cases_do_not_pay(case):
    m = dataclasses.replace(GOOD, **case)
    assert hybrid_tokens_per_s(m) < cloud_tokens_per_s(m)
    assert not drafting_pays(m, drafting_now=True)


def test_a_loaded_cloud_step_favours_drafting():
    """16 sessions at capacity make each cloud step slow; drafting, which needs fewer steps, pays more."""
    middling = dataclasses.replace(GOOD, acceptance=0.6, block_tokens=3)
    loaded = dataclasses.replace(middling, cloud_step_s=0.5, verify_s=0.6, round_trip_s=0.62)
    assert hybrid_tokens_per_s(loaded) / cloud_tokens_per_s(loaded) > \
        hybrid_tokens_per_s(middling) / cloud_tokens_per_s(middling)


def test_while_drafting_the_measured_rate_decides():
    """Bursty acceptance makes a good draft beat the independent-acceptance model: measured wins."""
    modelled_loss = dataclasses.replace(GOOD, acceptance=0.6, block_tokens=3, cloud_step_s=0.03)
    assert not drafting_pays(modelled_loss, drafting_now=True)
    measured_win = dataclasses.replace(modelled_loss, measured_tokens_per_s=40.0)
    assert drafting_pays(measured_win, drafting_now=True)
    assert not drafting_pays(measured_win, drafting_now=False)  # while the cloud decodes, only the model
    measured_loss = dataclasses.replace(GOOD, measured_tokens_per_s=10.0)
    assert not drafting_pays(measured_loss, drafting_now=True) and drafting_pays(measured_loss, drafting_now=False)


def test_the_cloud_with_guesses_and_a_measured_drafting_stretch_bound_a_switch_back():
    """While the cloud decodes, its measured pace with the draft's guesses is what blocks must beat,
    and the model is not trusted beyond what the session's last stretch of drafting measured."""
    assert drafting_pays(GOOD, drafting_now=False)  # the model alone: blocks would pay
    guessing = dataclasses.replace(GOOD, cloud_measured_tokens_per_s=hybrid_tokens_per_s(GOOD))
    assert cloud_tokens_per_s(guessing) == hybrid_tokens_per_s(GOOD) > 1 / GOOD.cloud_step_s
    assert not drafting_pays(guessing, drafting_now=False)
    tried = dataclasses.replace(GOOD, last_drafting_tokens_per_s=1.2 / GOOD.cloud_step_s)
    assert not drafting_pays(tried, drafting_now=False)  # 1.2x the cloud alone: inside the band


def test_unknown_cloud_time_keeps_drafting():
    weak = dataclasses.replace(GOOD, acceptance=0.01, cloud_step_s=0.0)
    assert cloud_tokens_per_s(weak) == 0.0
    assert drafting_pays(weak, drafting_now=True) and drafting_pays(weak, drafting_now=False)


def _with_ratio(ratio: float) -> PaysInputs:
    """Inputs where hybrid / cloud-only is `ratio` (by setting the cloud's step)."""
    return dataclasses.replace(GOOD, cloud_step_s=ratio / hybrid_tokens_per_s(GOOD))


@pytest.mark.parametrize("ratio", [OFF_BELOW + 0.01, (OFF_BELOW + ON_ABOVE) / 2, ON_ABOVE - 0.01])
def test_inside_the_band_each_mode_stays(ratio):
    m = _with_ratio(ratio)
    assert drafting_pays(m, drafting_now=True)
    assert not drafting_pays(m, drafting_now=False)


def test_outside_the_band_both_modes_agree():
    assert not drafting_pays(_with_ratio(OFF_BELOW - 0.01), True)
    assert not drafting_pays(_with_ratio(OFF_BELOW - 0.01), False)
    assert drafting_pays(_with_ratio(ON_ABOVE + 0.01), True)
    assert drafting_pays(_with_ratio(ON_ABOVE + 0.01), False)


LOSING, WINNING = _with_ratio(0.5), _with_ratio(2.0)


def test_switching_off_waits_for_evidence():
    switch = DraftingSwitch()
    for _ in range(MIN_VERDICTS - 1):
        switch.observed()
        assert not switch.update(LOSING) and switch.drafting
    switch.observed()
    assert switch.update(LOSING) and not switch.drafting and switch.switches == 1
    assert switch.evidence == 0


def test_switching_back_waits_for_shadow_evidence():
    switch = DraftingSwitch()
    switch.observed(MIN_VERDICTS)
    switch.update(LOSING)
    switch.observed(MIN_SHADOW - 1)
    assert not switch.update(WINNING) and not switch.drafting
    switch.observed()
    assert switch.update(WINNING) and switch.drafting and switch.switches == 2


def test_band_rates_never_flap():
    switch = DraftingSwitch()
    for ratio in [0.99, 1.01, 1.2, 1.02, 1.24, 1.1] * 20:
        switch.observed(100)
        switch.update(_with_ratio(ratio))
    assert switch.switches == 1  # off once at 0.99; nothing in the band brought it back


def test_resumptions_that_do_not_last_back_off_and_a_lasting_one_resets():
    switch = DraftingSwitch()
    switch.observed(MIN_VERDICTS)
    switch.update(LOSING)
    needed = [switch.shadow_needed]
    for _ in range(8):  # the shadow flatters the draft; real drafting keeps losing at once
        switch.observed(switch.shadow_needed)
        assert switch.update(WINNING)
        switch.observed(MIN_VERDICTS)
        assert switch.update(LOSING)
        needed.append(switch.shadow_needed)
    assert needed[:4] == [MIN_SHADOW, 2 * MIN_SHADOW, 4 * MIN_SHADOW, 8 * MIN_SHADOW]
    assert needed[-1] == MAX_SHADOW
    switch.observed(switch.shadow_needed)
    switch.update(WINNING)
    switch.observed(LASTING)
    assert switch.shadow_needed == MIN_SHADOW


def test_a_session_that_starts_with_the_cloud_decoding_tries_blocks_only_on_more_evidence():
    from edge.drafting_pays import FIRST_TRY_SHADOW

    switch = DraftingSwitch(drafting=False)
    switch.observed(FIRST_TRY_SHADOW - 1)
    assert not switch.update(GOOD)  # the model says blocks pay, but the evidence is too thin yet
    switch.observed()
    assert switch.update(GOOD) and switch.drafting
