"""Distillation's pure parts: divergences, the report's arithmetic, layer choice, prompt files."""

from __future__ import annotations

import math

import pytest
import torch

from common.errors import InvalidArgument
from distill.figures import accepted_prefix, expected_tokens_per_round, predicted_speedup
from distill.losses import distillation_loss, divergence, top_k_teacher, with_rest
from distill.prompts import DEFAULT_PROMPTS, RAW_PROMPTS, read_prompts, split_heldout


def _log_probs(rows: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(rows, vocab, generator=generator), dim=-1)


def _reference(p: torch.Tensor, q: torch.Tensor, kind: str) -> torch.Tensor:
    """The textbook formulas, on probabilities in float64."""
    p, q = p.double(), q.double()
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    m = (p + q) / 2
    return (kl(p, m) + kl(q, m)) / 2


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_divergence_matches_the_formula_and_vanishes_only_at_equality(kind):
    log_p, log_q = _log_probs(5, 11, 0), _log_probs(5, 11, 1)
    got = divergence(log_p, log_q, kind)
    assert got.shape == (5,)
    torch.testing.assert_close(got.double(), _reference(log_p.exp(), log_q.exp(), kind), rtol=1e-4, atol=1e-6)
    assert (got > 0).all()
    assert divergence(log_p, log_p, kind).abs().max() < 1e-6
    if kind == "jsd":
        assert (got <= math.log(2) + 1e-6).all()  # JSD is bounded by log 2


def test_forward_and_reverse_kl_are_each_others_mirror():
    log_p, log_q = _log_probs(4, 7, 2), _log_probs(4, 7, 3)
    torch.testing.assert_close(divergence(log_p, log_q, "forward_kl"), divergence(log_q, log_p, "reverse_kl"))


def test_unknown_divergence_is_refused():
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence(_log_probs(1, 3, 0), _log_probs(1, 3, 1), "tvd")


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_top_k_teacher_with_the_whole_vocabulary_is_the_full_loss(kind):
    teacher, student = 4 * torch.randn(6, 20), 4 * torch.randn(6, 20)
    full = distillation_loss(student, teacher, kind)
    top = distillation_loss(student, top_k_teacher(teacher, 20), kind)
    torch.testing.assert_close(top, full, rtol=1e-3, atol=1e-5)  # the rest's floor (1e-6) is the difference


def test_top_k_coarsens_both_sides_onto_k_plus_rest():
    log_probs, ids = top_k_teacher(torch.tensor([[0.0, 3.0, 1.0, 2.0]]), 2)
    assert ids.tolist() == [[1, 3]]
    coarse = with_rest(log_probs)
    assert coarse.shape == (1, 3)
    torch.testing.assert_close(coarse.exp().sum(-1), torch.ones(1))
    p = torch.softmax(torch.tensor([0.0, 3.0, 1.0, 2.0]), -1)
    torch.testing.assert_close(coarse.exp()[0, 2], p[0] + p[2])


def test_gradients_are_finite_for_extreme_logits():
    student = torch.tensor([[200.0, -200.0, 0.0, 50.0]], requires_grad=True)
    teacher = torch.tensor([[-300.0, 300.0, 0.0, 1.0]])
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        for target in (teacher, top_k_teacher(teacher, 2)):
            student.grad = None
            distillation_loss(student, target, kind).sum().backward()
            assert torch.isfinite(student.grad).all(), kind


def test_loss_gradient_moves_the_student_towards_the_teacher():
    teacher = 3 * torch.randn(8, 30, generator=torch.Generator().manual_seed(0))
    student = torch.zeros(8, 30, requires_grad=True)
    optimizer = torch.optim.SGD([student], lr=1.0)
    losses = []
    for _ in range(50):
        loss = distillation_loss(student, teacher, "jsd").sum()
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] / 2


@pytest.mark.parametrize("alpha,k,expected", [(0.0, 5, 1.0), (0.5, 1, 1.5), (0.5, 3, 1.875), (1.0, 4, 5.0)])
def test_expected_tokens_per_round(alpha, k, expected):
    assert expected_tokens_per_round(alpha, k) == pytest.approx(expected)


def test_predicted_speedup_picks_the_best_block_length():
    speedup, k = predicted_speedup(0.8, 0.05, 32)
    by_k = [expected_tokens_per_round(0.8, j) / (j * 0.05 + 1) for j in range(1, 33)]
    assert speedup == pytest.approx(max(by_k)) and k == by_k.index(max(by_k)) + 1
    assert predicted_speedup(0.0, 0.5, 8) == (pytest.approx(1 / 1.5), 1)  # a useless draft only costs
    assert predicted_speedup(0.99, 0.01, 4)[1] == 4  # a cheap, good draft uses the longest block


def test_accepted_prefix():
    assert accepted_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert accepted_prefix([5], [6]) == 0
    assert accepted_prefix([1, 2], [1, 2, 3]) == 2


def test_kept_layers_spread_evenly_with_first_and_last():
    pytest.importorskip("transformers")
    from distill.models import kept_layers

    assert kept_layers(30, 6) == [0, 6, 12, 17, 23, 29]
    assert kept_layers(30, 10)[0] == 0 and kept_layers(30, 10)[-1] == 29 and len(kept_layers(30, 10)) == 10
    assert kept_layers(2, 1) == [0]
    for bad in (0, 30, 31, -1):
        with pytest.raises(InvalidArgument, match="--layers must be between 1 and 29"):
            kept_layers(30, bad)


def test_prompt_files_lines_and_jsonl(tmp_path):
    lines = tmp_path / "p.txt"
    lines.write_text("first prompt\n\n  \nsecond prompt\n")
    assert read_prompts(lines) == ["first prompt", "second prompt"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n{"text": "b\\nc"}\n')
    assert read_prompts(jsonl) == ["a", "b\nc"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3}\n')
    with pytest.raises(InvalidArgument, match="line 1"):
        read_prompts(bad)
    assert read_prompts(None) == list(DEFAULT_PROMPTS) and len(set(DEFAULT_PROMPTS)) > 200
    assert read_prompts(None, chat=False) == list(RAW_PROMPTS) and len(set(RAW_PROMPTS)) > 200
    assert read_prompts(lines, chat=False) == ["first prompt", "second prompt"]  # a file is read as it is


def test_heldout_split_is_seeded_and_disjoint():
    prompts = [f"p{i}" for i in range(20)]
    train, held = split_heldout(prompts, 5, seed=3)
    assert len(held) == 5 and not set(train) & set(held) and sorted(train + held) == sorted(prompts)
    assert split_heldout(prompts, 5, seed=3) == (train, held)
    with pytest.raises(InvalidArgument, match="--heldout"):
        split_heldout(prompts, 20, seed=0)


def test_default_prompts_exclude_the_bench_prompts():
    from bench.prompts import PROMPTS
    from bench.prompts import RAW_PROMPTS as BENCH_RAW

    assert not set(PROMPTS) & set(DEFAULT_PROMPTS)
    # Neither the bench's raw openings nor their beginnings: the bench measures text the draft never saw.
    assert not {p[:20] for p in BENCH_RAW} & {p[:20] for p in RAW_PROMPTS}
