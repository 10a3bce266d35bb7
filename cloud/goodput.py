"""Goodput-aware speculation: under load, the cloud caps the drafts per block (Verdict.max_drafts).

A rejected draft is verification work spent for nothing, and under load the cloud's forward
passes are what every session shares. Each edge picks its block length for its own speed
(edge/draft_length.py: E(k) / (k·t_d + L)); it cannot see that its long blocks make everyone's
passes longer. So, as WISP (arXiv 2601.11652) and vLLM's dynamic speculation do on the server's
side, the cloud picks the block length that maximizes its *goodput*, committed tokens per
second of forward pass, and sends it with every verdict as a cap:

    k* = argmax_k  n · E(α, k) / T(o + n·(k + 1)),   E(α, k) = (1 - α^(k+1)) / (1 - α)

n: the sessions verifying in a pass; o: the other tokens in it (decoding steps, prompt chunks);
α: the per-token acceptance over recent verdicts (estimated as the edge does: a verdict
accepting a of d drafts is a successes plus one failure when a < d); T: the step time the
scheduler fits (cloud/step_time.py). With T = a + b·tokens, a large per-pass overhead a (an
idle cloud, a GPU) favours long blocks and a large per-token cost b with many sessions favours
short ones.

When it caps. Only under load: at least min_sessions verifying in the last pass and the model
busy (forward passes over wall time) at least busy_threshold; and only when k* is below the
longest block recently verified (a cap no edge reaches changes nothing). A single user on an
idle cloud gets no cap, so keeps today's speed. Block lengths never change an output (the
float64 batched-vs-alone tests hold at any block length), so shaping is exact by construction.

Pure: no clock, no model; the scheduler feeds it (tests/test_goodput.py).
"""

from __future__ import annotations

from collections.abc import Callable

from common.checks import check_range

ACCEPTANCE_DECAY = 0.98  # per verdict: over all sessions, so evidence of the last ~50 verdicts
ACCEPTANCE_PRIOR, PRIOR_WEIGHT = 0.8, 4.0
BUSY_WEIGHT = 0.2  # of the newest pass in the busy-share average
LONGEST_DECAY = 0.9  # uncapped, the longest block seen fades, so the reference follows what edges send now


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a block of k drafts commits in expectation (accepted drafts, then the correction or bonus)."""
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def best_block(alpha: float, sessions: int, other_tokens: int, step_s: Callable[[int], float], most: int) -> int:
    """The drafts per block in [1, most] that maximize committed tokens per second of forward pass."""
    return max(range(1, most + 1),
               key=lambda k: sessions * expected_tokens(alpha, k) / step_s(other_tokens + sessions * (k + 1)))


class GoodputShaper:
    """Tracks acceptance, the model's busy share and the longest blocks; answers the cap for a pass.

    fixed_cap > 0 sends that cap with every verdict (an operator's choice, and how the tests make
    shaping happen); enabled=False sends none.
    """

    def __init__(self, enabled: bool = True, fixed_cap: int = 0, min_sessions: int = 2,
                 busy_threshold: float = 0.75, most: int = 32):
        check_range(fixed_cap, "fixed draft cap", low=0)
        self.enabled, self.fixed_cap = enabled, fixed_cap
        self.min_sessions, self.busy_threshold, self.most = min_sessions, busy_threshold, most
        self._successes, self._trials = ACCEPTANCE_PRIOR * PRIOR_WEIGHT, PRIOR_WEIGHT
        self.busy = 0.0
        self._longest = 0.0  # the longest block edges send when not capped
        self._capping = False

    @property
    def acceptance(self) -> float:
        return min(0.995, max(0.01, self._successes / self._trials))

    def observe_verdict(self, drafted: int, accepted: int) -> None:
        if drafted:
            self._successes = ACCEPTANCE_DECAY * self._successes + accepted
            self._trials = ACCEPTANCE_DECAY * self._trials + accepted + (1 if accepted < drafted else 0)
            # While capped, edges send at most the cap: the uncapped length is held, not decayed,
            # or the cap would lift itself once the blocks it shortened became "the longest".
            self._longest = max(self._longest if self._capping else LONGEST_DECAY * self._longest, float(drafted))

    def observe_pass(self, pass_s: float, idle_before_s: float) -> None:
        """A forward pass took pass_s after the model had sat idle for idle_before_s."""
        share = pass_s / max(pass_s + max(idle_before_s, 0.0), 1e-9)
        self.busy = (1 - BUSY_WEIGHT) * self.busy + BUSY_WEIGHT * share

    def cap(self, verifying: int, other_tokens: int, step_s: Callable[[int], float | None]) -> int | None:
        """The cap to send with the verdicts of a pass that verified `verifying` sessions' blocks
        beside `other_tokens` other tokens (None: no cap)."""
        if self.fixed_cap:
            return self.fixed_cap
        cap = None
        if self.enabled and verifying >= self.min_sessions and self.busy >= self.busy_threshold and step_s(1):
            longest = int(self._longest + 0.5)
            best = best_block(self.acceptance, verifying, other_tokens, lambda n: step_s(n) or 1e-6,
                              min(self.most, max(longest, 1)))
            cap = best if best < longest else None
        self._capping = cap is not None
        return cap
