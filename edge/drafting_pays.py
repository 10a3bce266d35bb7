"""Whether drafting pays for a session, or the cloud should decode on its own (issue 19: never slower).

Drafting is worth it only when it commits more tokens per second than the cloud streaming alone.
A weak draft, a slow edge CPU, a long round trip or a loaded cloud can each make it lose. So a
session compares, from what it measures, two rates:

- **Hybrid.** A block of k drafts, each accepted with probability α, commits
  E(k) = (1 - α^(k+1)) / (1 - α) tokens (Leviathan et al. 2023, arXiv 2211.17192, §3.1). In lock
  step a block costs k·t_d + L (drafting, then the round trip L: link, queueing and the cloud's
  pass). With D blocks in flight the edge drafts while verdicts travel: as long as every draft
  and the guess of the bonus token hold (probability α^(k+1)) the pipeline flows, one block per
  max(k·t_d, t_v, (k·t_d + L) / D), where t_v is the cloud's pass over a block; any rejection
  flushes it, and the next block costs the lock-step k·t_d + L again. So

      hybrid = E(k) / (α^(k+1)·flowing + (1 - α^(k+1))·(k·t_d + L)).

  That model assumes acceptances independent of each other; real ones come in runs (easy
  stretches of text), so it underestimates a good draft. While the session drafts, the rate it
  actually commits (tokens per second over its recent verdicts) is the better figure and is
  used instead; the model serves where nothing is measured: while the cloud decodes alone, with
  the shadow acceptance, to decide whether drafting would pay again.

- **Cloud only.** The cloud decoding alone streams one token per scheduler step: 1 / t_c, with
  t_c the cloud's own time per token *for this session* (Verdict.decode_step_us: its estimate of
  a step holding this session's one token beside everyone else's work). Its decode requests are
  pipelined (positions are known in advance), so the link adds no gap.

Hysteresis. Drafting stops when hybrid < OFF_BELOW·cloud and resumes only when hybrid >
ON_ABOVE·cloud, and never on thin evidence: a switch to the cloud needs MIN_VERDICTS verdicts
since drafting (re)started, a switch back `shadow_needed` shadow predictions (the draft
predicting the tokens the cloud streams, no bytes on the wire) since the cloud took over. A
resumption that does not last doubles shadow_needed (up to MAX_SHADOW): a draft whose shadow
agreement flatters it is re-probed ever more rarely instead of flapping.

Everything here is pure: no model, no thread, no clock (tests/test_drafting_pays.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.draft_length import expected_tokens

OFF_BELOW = 1.0  # drafting stops when its expected rate falls below cloud-only's
ON_ABOVE = 1.25  # and resumes only when it would beat cloud-only by this factor
MIN_VERDICTS = 2  # verdicts after drafting (re)starts before it may stop again
MIN_SHADOW = 16  # shadow predictions after the cloud takes over before drafting may resume
MAX_SHADOW = 512  # the most shadow predictions a re-probe may wait for (after repeated short resumptions)
FIRST_TRY_SHADOW = 4 * MIN_SHADOW  # before a session that started with the cloud decoding first tries blocks
LASTING = 24  # verdicts: a resumption that lasts this long resets the re-probe backoff


@dataclass(frozen=True)
class PaysInputs:
    """What one session measured, in seconds (see the module docstring)."""

    acceptance: float  # α, per draft token
    block_tokens: int  # k, drafts per block
    depth: int  # D, blocks in flight at most
    draft_s: float  # t_d, per drafted token
    round_trip_s: float  # L, block sent -> its verdict back
    verify_s: float  # t_v, the cloud's pass over one block
    cloud_step_s: float  # t_c, the cloud's time per token decoding alone for this session; 0: unknown
    measured_tokens_per_s: float = 0.0  # committed per second over the recent verdicts while drafting; 0: none
    cloud_measured_tokens_per_s: float = 0.0  # committed per second while the cloud decoded (with guesses); 0: none
    last_drafting_tokens_per_s: float = 0.0  # what the session's last stretch of drafting measured; 0: none


def hybrid_tokens_per_s(m: PaysInputs) -> float:
    """Expected committed tokens per second while drafting (the formula in the module docstring)."""
    k = max(1, m.block_tokens)
    lock_step = k * m.draft_s + m.round_trip_s
    if m.depth <= 1:
        return expected_tokens(m.acceptance, k) / lock_step
    flows = m.acceptance ** (k + 1)  # every draft and the guessed bonus token held: the pipeline runs on
    flowing = max(k * m.draft_s, m.verify_s, lock_step / m.depth)
    return expected_tokens(m.acceptance, k) / (flows * flowing + (1 - flows) * lock_step)


def cloud_tokens_per_s(m: PaysInputs) -> float:
    """Tokens per second of the cloud decoding alone for this session (0 when unknown): one per step,
    or what it measurably committed with the draft's guesses (edge/decode_hints.py), when more."""
    return max(1.0 / m.cloud_step_s if m.cloud_step_s > 0 else 0.0, m.cloud_measured_tokens_per_s)


def drafting_tokens_per_s(m: PaysInputs, drafting_now: bool) -> float:
    """What drafting commits per second: measured while drafting (when measured), else the model."""
    if drafting_now and m.measured_tokens_per_s > 0:
        return m.measured_tokens_per_s
    model = hybrid_tokens_per_s(m)
    # The model is optimistic for a draft whose acceptance comes in runs; once drafting was tried
    # and measured in this session, it is not trusted beyond what that stretch reached.
    return min(model, m.last_drafting_tokens_per_s) if m.last_drafting_tokens_per_s > 0 else model


def drafting_pays(m: PaysInputs, drafting_now: bool) -> bool:
    """Whether the session should draft, given its mode now (the hysteresis band of the docstring).

    An unknown cloud time (an older server) keeps drafting: there is nothing to compare with, and
    such a server does not take CloudDecode anyway.
    """
    cloud = cloud_tokens_per_s(m)
    if cloud <= 0:
        return True
    return drafting_tokens_per_s(m, drafting_now) >= (OFF_BELOW if drafting_now else ON_ABOVE) * cloud


class DraftingSwitch:
    """The session's mode (drafting or the cloud decoding alone) and the evidence behind a switch."""

    def __init__(self, drafting: bool = True):
        """drafting: the mode a session starts in. A session that starts with the cloud decoding (a
        draft of another family, guessing ahead) has no measured drafting rate to go by, only the
        model, which is optimistic for such drafts: it tries blocks only after FIRST_TRY_SHADOW
        guesses, as if it had resumed for nothing twice already."""
        self.drafting = drafting
        self.evidence = 0  # verdicts since drafting (re)started, or shadow predictions since the cloud took over
        self.shadow_needed = MIN_SHADOW if drafting else FIRST_TRY_SHADOW
        self.switches = 0  # mode changes so far

    def observed(self, count: int = 1) -> None:
        """count more verdicts (drafting) or shadow predictions (cloud decoding) came in."""
        self.evidence += count
        if self.drafting and self.evidence >= LASTING:
            self.shadow_needed = MIN_SHADOW  # this resumption lasted: the backoff starts over

    def update(self, inputs: PaysInputs) -> bool:
        """Switches mode if the evidence suffices and the rates say so; True when it switched."""
        needed = MIN_VERDICTS if self.drafting else self.shadow_needed
        if self.evidence < needed or drafting_pays(inputs, self.drafting) == self.drafting:
            return False
        if self.drafting and self.switches and self.evidence < LASTING:
            self.shadow_needed = min(MAX_SHADOW, 2 * self.shadow_needed)  # resumed for nothing: probe later
        self.drafting = not self.drafting
        self.evidence = 0
        self.switches += 1
        return True
