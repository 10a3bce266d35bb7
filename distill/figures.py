"""The report's arithmetic: pure functions, no model.

Greedy speculative decoding with a draft that agrees with the target's next token with
probability α at each position (independently) commits E(k) = (1 - α^(k+1)) / (1 - α) tokens
per round of k drafts (Leviathan et al. 2023, arXiv 2211.17192, §3.1). A round costs k draft
steps and one target pass, so with c = draft time / target time per token the walltime
speedup over the target alone is E(k) / (k·c + 1) (§3.5); the edge's adaptive policy picks the
k that maximizes it (edge/draft_length.py), so the prediction does too.
"""

from __future__ import annotations

from collections.abc import Sequence


def expected_tokens_per_round(alpha: float, k: int) -> float:
    """E(k): drafts accepted plus the target's own token, per round of k drafts."""
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def predicted_speedup(alpha: float, cost_ratio: float, max_draft_tokens: int) -> tuple[float, int]:
    """(best speedup over the target alone, the block length k that gives it), k in 1..max."""
    best = max(range(1, max_draft_tokens + 1),
               key=lambda k: expected_tokens_per_round(alpha, k) / (k * cost_ratio + 1.0))
    return expected_tokens_per_round(alpha, best) / (best * cost_ratio + 1.0), best


def accepted_prefix(drafts: Sequence[int], reference: Sequence[int]) -> int:
    """How many drafts greedy verification accepts: the length of the prefix equal to the target's."""
    n = 0
    for drafted, wanted in zip(drafts, reference):
        if drafted != wanted:
            break
        n += 1
    return n


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator
