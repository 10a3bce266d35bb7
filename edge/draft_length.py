"""How many tokens each draft block holds, and how many blocks may be in flight at once.

Both are chosen per session from three things the session measures as it runs:

- acceptance α: the share of drafts the cloud accepts. A verdict accepting a of d drafts is
  a successes, plus one failure when a < d (the drafts after a rejection were never judged),
  so α = successes / (successes + failures) is the maximum-likelihood estimate under the
  usual model of independent acceptances (Leviathan et al. 2023, arXiv 2211.17192, §3.1).
  Old verdicts fade out, so the estimate follows the text (code drafts well, prose less).
- draft time t_d: seconds the draft model takes per token.
- round trip L: seconds from sending a block to receiving its verdict (the link's RTT, the
  cloud's forward pass, and any queueing behind earlier blocks).

Block length k. A round of k drafts commits E(k) = (1 - α^(k+1)) / (1 - α) tokens in
expectation (the accepted drafts, then the correction or bonus token) and costs k·t_d + L.
The policy picks the k in [min_tokens, max_tokens] that maximizes E(k) / (k·t_d + L): the
speedup formula of Leviathan et al. §3.5 with c = t_d / L. A long link or a good draft
lengthens blocks (fewer cloud passes, fewer bytes); a poor draft shortens them.

Depth. While blocks are in flight the edge keeps drafting the continuation that assumes them
accepted. It stops drafting when `depth` blocks are in flight, so to never wait on the link
the blocks sent after a block must take a round trip to draft: depth = 1 + ceil(L / (k·t_d)),
capped at max_in_flight.

Fixed lengths. Sparse-q sampling commits a different (equally exact) sample when a position
is a block's bonus position rather than a verified draft, so its output depends on where
blocks end. There block lengths stay at max_tokens (cut only by confidence, which is a pure
function of the prefix), so the output stays a function of seed and prompt; depth still adapts,
since pipelined blocks verify the same positions as lock-step ones.

Cloud cap. Under load the cloud may send a cap with its verdicts (Verdict.max_drafts, see
cloud/goodput.py): the block length that commits the most tokens per second of its forward
passes, which all sessions share. Adaptive blocks then hold at most that many drafts, until a
verdict comes without one. Fixed lengths (above) ignore it, since there a block's end changes
the sample; so does adaptive=False, the fixed behaviour for comparisons.

Confidence. A block ends right after a draft whose probability under the draft model is below
min_confidence: that draft is the likeliest to be rejected, so its verdict should come back
as soon as possible. (On the default pair, same weights on both sides, every draft with top
probability >= 0.5 was accepted and still ~90% of those below 0.2, so the default cut is low.)
"""

from __future__ import annotations

import math

from common.errors import InvalidArgument

ACCEPTANCE_PRIOR = 0.8  # before any verdict; worth PRIOR_WEIGHT drafts of evidence
PRIOR_WEIGHT = 4.0
ACCEPTANCE_DECAY = 0.9  # per verdict: evidence older than ~10 verdicts fades out
EMA_WEIGHT = 0.2  # of the newest sample in the draft-time and round-trip averages
DRAFT_TIME_PRIOR_S = 0.015  # used until the first draft is timed
ROUND_TRIP_PRIOR_S = 0.1  # used until the first round trip is timed
# What a verdict costs beyond the link's own round trip (the cloud's forward pass over a block),
# until the first verdict measures it: ~0.12 s for the default target on one CPU core.
PASS_TIME_PRIOR_S = 0.1
ALPHA_BOUNDS = (0.01, 0.995)  # keeps E(k) finite and lets a perfect streak still end


class DraftLengthPolicy:
    """Block length and pipeline depth for one session (see the module docstring).

    With adaptive=False, blocks hold max_tokens drafts (or fewer, after a low-confidence draft)
    and max_in_flight blocks may be in flight: the fixed behaviour, for comparisons. With
    fixed_lengths, only the depth adapts (see "Fixed lengths" above).
    """

    def __init__(self, max_tokens: int, min_confidence: float = 0.0, max_in_flight: int = 1,
                 adaptive: bool = True, min_tokens: int = 1, fixed_lengths: bool = False):
        if not 1 <= min_tokens <= max_tokens:
            raise InvalidArgument(f"need 1 <= min draft tokens ({min_tokens}) <= max draft tokens ({max_tokens})")
        if max_in_flight < 1:
            raise InvalidArgument(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.max_in_flight = max_in_flight
        self.min_confidence = min_confidence
        self.adaptive = adaptive
        self.fixed_lengths = fixed_lengths
        self.cut_requested = False
        self._successes = ACCEPTANCE_PRIOR * PRIOR_WEIGHT
        self._trials = PRIOR_WEIGHT
        self.draft_time_s: float | None = None
        self.round_trip_s: float | None = None
        self.link_s: float | None = None  # the link's own round trip, without model work (observe_link)
        self.cloud_cap: int | None = None  # the cloud's goodput cap on drafts per block (None: none)
        self.block_tokens = max_tokens
        self.depth = max_in_flight
        self._update()

    @property
    def acceptance(self) -> float:
        lo, hi = ALPHA_BOUNDS
        return min(hi, max(lo, self._successes / self._trials))

    def observe_draft(self, confidence: float, seconds: float | None = None) -> None:
        """A token was drafted with probability `confidence`, taking `seconds`."""
        if confidence < self.min_confidence:
            self.cut_requested = True
        if seconds is not None:
            self.draft_time_s = _ema(self.draft_time_s, seconds)

    def observe_link(self, seconds: float) -> None:
        """The link's own round trip (the cloud acknowledged the session `seconds` after it was sent).

        A verdict takes that and a forward pass, so until the first verdict is timed the round
        trip is taken as seconds + PASS_TIME_PRIOR_S. Taking the acknowledgement alone as the
        round trip made the first blocks of every answer too short (more passes and bytes).
        """
        self.link_s = seconds
        if self.round_trip_s is None:
            self.round_trip_s = seconds + PASS_TIME_PRIOR_S
            self._update()

    def observe_verdict(self, drafted: int, accepted: int, seconds: float | None = None) -> None:
        """The cloud accepted `accepted` of `drafted` drafts, `seconds` after the block was sent."""
        if drafted:
            self._successes = ACCEPTANCE_DECAY * self._successes + accepted
            self._trials = ACCEPTANCE_DECAY * self._trials + accepted + (1 if accepted < drafted else 0)
        if seconds is not None:
            self.round_trip_s = _ema(self.round_trip_s, seconds)
        self._update()

    def observe_cap(self, cap: int | None) -> None:
        """The cloud's cap on drafts per block, from the latest verdict (None: it sent none)."""
        if cap != self.cloud_cap:
            self.cloud_cap = cap
            self._update()

    def start_block(self) -> None:
        self.cut_requested = False

    def snapshot(self) -> dict:
        """The estimates and choices now, for stats and logs."""
        return {
            "acceptance": round(self.acceptance, 4),
            "draft_ms": round(1000 * (self.draft_time_s or 0.0), 2),
            "round_trip_ms": round(1000 * (self.round_trip_s or 0.0), 2),
            "block_tokens": self.block_tokens,
            "depth": self.depth,
            "cloud_cap": self.cloud_cap,
        }

    def _update(self) -> None:
        if not self.adaptive:
            return
        t_d = self.draft_time_s or DRAFT_TIME_PRIOR_S
        rtt = self.round_trip_s or ROUND_TRIP_PRIOR_S
        if not self.fixed_lengths:
            hi = min(self.max_tokens, self.cloud_cap or self.max_tokens)
            self.block_tokens = best_block_length(self.acceptance, t_d, rtt, min(self.min_tokens, hi), hi)
        self.depth = min(self.max_in_flight, 1 + math.ceil(rtt / (self.block_tokens * t_d)))


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a round of k drafts commits in expectation, each accepted with probability alpha."""
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def best_block_length(alpha: float, draft_time_s: float, round_trip_s: float, lo: int, hi: int) -> int:
    """The k in [lo, hi] that maximizes expected tokens per second of one round, E(k) / (k·t_d + L)."""
    return max(range(lo, hi + 1),
               key=lambda k: expected_tokens(alpha, k) / (k * draft_time_s + round_trip_s))


def _ema(average: float | None, sample: float) -> float:
    return sample if average is None else (1 - EMA_WEIGHT) * average + EMA_WEIGHT * sample
