"""How long a scheduler step takes, as a function of the tokens in its pass: the cloud's side of
"does drafting pay" (issue 19; the edge's side is edge/drafting_pays.py).

An edge decides whether to draft by comparing what drafting commits per second with what the
cloud would stream decoding alone. The latter depends on this replica and its load: a step with
this session's single token beside the other sessions' work. Each step's time (the pass, and the
wait for late blocks before it) is roughly linear in the tokens it holds, t(n) = a + b·n (the
per-pass overhead and weight reads, then the per-token work). StepTimeModel fits that line by
exponentially weighted least squares over the recent steps, so it follows load and warm-up.

The slope is shrunk (ridge) toward a prior line through the mean, t ∝ n + PRIOR_TOKENS: when the
recent steps all had about the same size (one session verifying blocks of one length), the data
say nothing about the slope and the prior decides; with steps of varied sizes the data win.
Pure: no clock, no model (tests/test_step_time.py).
"""

from __future__ import annotations

DECAY = 0.95  # per step: the fit follows the last ~20 steps
# On one CPU core the default target took 58.5 ms for a 1-token pass and 120 ms for 9 tokens:
# t ∝ n + 6.5. A GPU's line is flatter (a larger offset); the data correct it when they can.
PRIOR_TOKENS = 8.0
RIDGE = 4.0  # tokens²: how much spread in step sizes it takes for the data's slope to win


class StepTimeModel:
    def __init__(self):
        self._w = self._n = self._t = self._nn = self._nt = 0.0  # weighted sums of 1, n, t, n², n·t

    def observe(self, tokens: int, seconds: float) -> None:
        """One step ran a pass of `tokens` tokens and took `seconds`."""
        d = DECAY
        self._w = d * self._w + 1
        self._n = d * self._n + tokens
        self._t = d * self._t + seconds
        self._nn = d * self._nn + tokens * tokens
        self._nt = d * self._nt + tokens * seconds

    def estimate(self, tokens: int) -> float | None:
        """Seconds a step of `tokens` tokens takes now; None before any step was observed."""
        if self._w <= 0:
            return None
        n, t = self._n / self._w, self._t / self._w
        variance = max(0.0, self._nn / self._w - n * n)
        covariance = self._nt / self._w - n * t
        prior_slope = t / (n + PRIOR_TOKENS)
        slope = (covariance + RIDGE * prior_slope) / (variance + RIDGE)
        slope = min(max(slope, 0.0), t / max(n, 1.0))  # time grows with tokens; no negative overhead
        return max(t + slope * (tokens - n), 1e-6)
