"""The engines implement the seams the rest of the code is written against."""

from cloud.target_engine import TargetEngine
from edge.draft_engine import DraftEngine


def test_llama_drafter_is_a_draft_engine(tiny_drafter):
    assert isinstance(tiny_drafter("exact"), DraftEngine)


def test_transformers_target_is_a_target_engine(tiny_target):
    assert isinstance(tiny_target, TargetEngine)


def test_the_protocols_are_not_satisfied_by_anything():
    assert not isinstance(object(), DraftEngine) and not isinstance(object(), TargetEngine)
