"""The speculative tail and the blocks in flight: SpeculativeRun's bookkeeping, with no model,
no stream and no clock, so that its rules are unit-tested (tests/test_draft_tail.py).

The tail is the committed tokens followed by every drafted token not yet heard back about.
`tail[:sent_upto]` is known to the cloud or in flight. A block is cut from the tail starting
at its *anchor* (the token before its first draft). A verdict that disagrees with the tail
resets it to the committed tokens and *dooms* every later block in flight: both sides then
know those blocks are stale, and the cloud answers them with a stale verdict. Each reset
starts a new *epoch*, so a draft made for an older tail is recognised and dropped.

While a block awaits its verdict, the tail token right after it is a *guess* of the cloud's
bonus token, not a draft: the cloud chooses that token itself.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from common.errors import ProtocolError
from common.wire import DraftBlock, Verdict


@dataclass
class InFlight:
    block: DraftBlock
    sent_at: float  # the caller's clock when the block was written to the stream
    doomed: bool = False  # known stale: sent before a rejection that invalidates it


@dataclass(frozen=True)
class Judged:
    """What one verdict did to the tail."""

    block: DraftBlock
    sent_at: float
    stale: bool  # the block was doomed; nothing was committed
    drafts: list[int]  # the block's tokens the cloud verified as drafts (none when stale)
    accepted: list[int]  # of those, the accepted prefix, now committed
    chosen: list[int]  # the cloud's own token, now committed ([] or one)
    reset: bool  # the verdict disagreed with the tail: the tail was reset, later blocks doomed

    @property
    def committed(self) -> list[int]:
        return self.accepted + self.chosen

    @property
    def stale_drafts(self) -> int:
        """Tokens the block carried besides its anchor (counted when it turned out stale)."""
        return len(self.block.token_ids) - 1 if self.stale else 0


class DraftTail:
    def __init__(self, committed: list[int]):
        self.committed = list(committed)
        self.tail: list[int] = []
        self.sent_upto = 0  # tail[:sent_upto] is known to the cloud or in flight
        self.in_flight: deque[InFlight] = deque()
        self.epoch = 0  # advanced on every reset, to drop drafts made for an old tail
        self.dists: list = []  # sparse-q distributions of tail[sent_upto:]
        self.reset()

    def reset(self) -> None:
        """The tail back to the committed tokens, in a new epoch."""
        self.tail = list(self.committed)
        self.sent_upto = len(self.tail)
        self.dists = []
        self.epoch += 1

    def awaiting_bonus(self) -> bool:
        """Whether the last block sent will bring a bonus token (it is in flight, not stale)."""
        return bool(self.in_flight) and not self.in_flight[-1].doomed

    def drafts_start(self) -> int:
        """Index in the tail of the first token the next block has verified as a draft (after
        the guess of a bonus token that a block in flight will bring)."""
        return max(self.sent_upto + self.awaiting_bonus(), len(self.committed))

    def pending_drafts(self) -> int:
        """Drafts in the tail not yet sent (-1 while the guess of a bonus token is missing)."""
        return len(self.tail) - self.drafts_start()

    def next_is_guess(self) -> bool:
        """Whether the next token appended to the tail is a guess of a bonus token, not a draft."""
        return len(self.tail) < self.drafts_start()

    def ends_in(self, token_ids: set[int]) -> bool:
        """Whether the tail's last uncommitted token is one of `token_ids` (a stop token)."""
        return len(self.tail) > len(self.committed) and self.tail[-1] in token_ids

    def append(self, epoch: int, token_id: int, dist=None) -> bool:
        """Appends a token drafted for the tail of `epoch`; False (and nothing appended) if the
        tail was reset since."""
        if epoch != self.epoch:
            return False
        self.tail.append(token_id)
        self.dists.append(dist)
        return True

    def cut_block(self, sent_at: float, with_dists: bool, max_drafts: int | None = None) -> DraftBlock:
        """The next block: from the anchor (the last token the cloud knows or will know) to the
        end of the tail, or to its first `max_drafts` drafts (the rest stays for later blocks);
        it is in flight from now on."""
        start = self.sent_upto - 1
        end = len(self.tail) if max_drafts is None else min(len(self.tail), self.drafts_start() + max_drafts)
        sent = end - self.sent_upto
        block = DraftBlock(start_position=start, token_ids=self.tail[start:end],
                           draft_dists=list(self.dists[:sent]) if with_dists else [])
        self.dists = self.dists[sent:]
        self.sent_upto = end
        self.in_flight.append(InFlight(block, sent_at))
        return block

    def start(self, position: int, token_id: int | None) -> list[int]:
        """The session started at `position` with the cloud's first token; returns the new ids."""
        if position != len(self.committed):
            raise ProtocolError(f"cloud started at position {position}, expected {len(self.committed)}")
        new = [token_id] if token_id is not None else []
        self.committed += new
        self.reset()
        return new

    def judge(self, verdict: Verdict) -> Judged:
        """Applies the verdict on the oldest block in flight: commits what it accepted and
        chose, and resets the tail if it disagrees with what was drafted after."""
        if not self.in_flight:
            raise ProtocolError("a verdict arrived for no block in flight")
        sent = self.in_flight.popleft()
        block = sent.block
        if verdict.start_position != block.start_position or verdict.stale != sent.doomed:
            raise ProtocolError(
                f"verdict for position {verdict.start_position} (stale={verdict.stale}) does not match the "
                f"block in flight at {block.start_position} (stale expected: {sent.doomed})"
            )
        if verdict.stale:
            return Judged(block, sent.sent_at, stale=True, drafts=[], accepted=[], chosen=[], reset=False)
        overlap = len(self.committed) - block.start_position
        drafts = block.token_ids[overlap:]
        if verdict.accepted_count > len(drafts):
            raise ProtocolError(f"cloud accepted {verdict.accepted_count} of {len(drafts)} drafts")
        accepted = drafts[: verdict.accepted_count]
        chosen = [] if verdict.next_token is None else [verdict.next_token]
        self.committed += accepted + chosen
        reset = self.tail[: len(self.committed)] != self.committed
        if reset:
            for later in self.in_flight:
                later.doomed = True
            self.reset()
        return Judged(block, sent.sent_at, stale=False, drafts=drafts, accepted=accepted, chosen=chosen, reset=reset)
