"""Token-level divergences between the target's (teacher's) and the draft's (student's) next-token
distributions, at temperature 1: the distillation loss.

DistillSpec (Zhou et al., ICLR 2024, arXiv 2310.08461) finds the best divergence depends on the
task and decoding strategy, so all three are offered:

- forward KL(p || q): the student covers everything the teacher might say (mode covering);
- reverse KL(q || p): the student concentrates on the teacher's likeliest tokens (mode seeking),
  which is what greedy acceptance rewards;
- JSD (beta = 1/2): bounded, between the two.

The teacher's distribution may be kept as its top-k tokens only (to cache it cheaply). Both
distributions are then coarsened the same way, onto those k tokens plus one "rest" outcome
holding the remaining mass, so every divergence is still between two proper distributions.
Pure functions of tensors: no model, no I/O.
"""

from __future__ import annotations

import math

import torch

from distill.config import DIVERGENCES



def divergence(log_p: torch.Tensor, log_q: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-position divergence between teacher p and student q, given as log-probabilities.

    log_p, log_q: [positions, outcomes] over the same outcomes. Returns [positions].
    """
    assert log_p.shape == log_q.shape, (log_p.shape, log_q.shape)
    if kind == "forward_kl":
        return _kl(log_p, log_q)
    if kind == "reverse_kl":
        return _kl(log_q, log_p)
    if kind == "jsd":
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        return 0.5 * _kl(log_p, log_m) + 0.5 * _kl(log_q, log_m)
    raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}")


MIN_REST = 1e-6
"""Smallest mass of the "rest" outcome: its log stays finite, so its gradient does too."""


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row, from finite log-probabilities (an a that underflows to 0 adds 0)."""
    return torch.nn.functional.kl_div(log_b, log_a, reduction="none", log_target=True).sum(-1)


def top_k_teacher(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k likeliest tokens and their log-probabilities (normalized over the whole vocab).

    teacher_logits: [positions, vocab]. Returns (log_probs [positions, k], ids [positions, k]).
    """
    log_probs = torch.log_softmax(teacher_logits.float(), dim=-1)
    values, ids = log_probs.topk(k, dim=-1)
    return values, ids


def with_rest(log_probs_k: torch.Tensor) -> torch.Tensor:
    """Appends the log of the mass outside the k outcomes: [positions, k] -> [positions, k + 1]."""
    total = torch.logsumexp(log_probs_k, dim=-1, keepdim=True).clamp(max=math.log1p(-MIN_REST))
    rest = torch.log(-torch.expm1(total))  # log(1 - exp(total)), stable near total = 0
    return torch.cat([log_probs_k, rest], dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                      kind: str) -> torch.Tensor:
    """Per-position loss of the student against the teacher.

    student_logits: [positions, vocab]. teacher: full logits [positions, vocab], or the pair
    (log-probs [positions, k], ids [positions, k]) from top_k_teacher. Returns [positions].
    """
    log_q = torch.log_softmax(student_logits.float(), dim=-1)
    if isinstance(teacher, tuple):
        log_p_k, ids = teacher
        assert log_p_k.shape == ids.shape and ids.shape[0] == log_q.shape[0], (log_p_k.shape, ids.shape, log_q.shape)
        return divergence(with_rest(log_p_k), with_rest(log_q.gather(-1, ids)), kind)
    assert teacher.shape == student_logits.shape, (teacher.shape, student_logits.shape)
    return divergence(torch.log_softmax(teacher.float(), dim=-1), log_q, kind)
