"""The cloud's step-time fit (cloud/step_time.py): pure, no clock, no model."""

from __future__ import annotations

import pytest

from cloud.step_time import PRIOR_TOKENS, StepTimeModel


def test_nothing_observed_is_unknown():
    assert StepTimeModel().estimate(1) is None


def test_varied_steps_recover_the_line():
    model = StepTimeModel()
    for _ in range(5):
        for n in (1, 9, 17, 40, 2):
            model.observe(n, 0.05 + 0.008 * n)
    for n in (1, 10, 60):
        assert model.estimate(n) == pytest.approx(0.05 + 0.008 * n, rel=0.02)


def test_steps_of_one_size_fall_back_to_the_prior_shape():
    model = StepTimeModel()
    for _ in range(30):
        model.observe(10, 0.120)
    assert model.estimate(10) == pytest.approx(0.120)
    assert model.estimate(1) == pytest.approx(0.120 * (1 + PRIOR_TOKENS) / (10 + PRIOR_TOKENS), rel=0.01)


def test_it_follows_load():
    model = StepTimeModel()
    for _ in range(30):
        model.observe(2, 0.06)
    quiet = model.estimate(2)
    for _ in range(60):
        model.observe(2, 0.3)  # 16 sessions now share every pass
    assert model.estimate(2) > 4 * quiet


def test_noise_never_gives_a_negative_slope_or_time():
    model = StepTimeModel()
    for n, t in [(1, 0.2), (30, 0.05), (2, 0.19), (28, 0.06)]:
        model.observe(n, t)
    assert model.estimate(1) <= model.estimate(30)
    assert model.estimate(0) > 0
