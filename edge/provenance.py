"""Who chose each token of an answer: the local draft (accepted by the cloud), the cloud, or
the local model alone.

Every token of a hybrid answer is the cloud model's choice, but the way it got there differs:
most were drafted locally and accepted by one verification pass; one per round is the cloud's
own (its first token, the correction after a rejected draft, or the bonus token after a fully
accepted block). While the cloud is unreachable the local model writes alone (offline
fallback), and those tokens are not the cloud model's. The chat page shades the three kinds;
`tandem serve` streams them as the `provenance` extension of each chunk.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Source(str, enum.Enum):
    ACCEPTED = "accepted"  # drafted locally, accepted by the cloud's verification
    CLOUD = "cloud"  # chosen by the cloud: its first token, a correction or a bonus token
    LOCAL = "local"  # chosen by the local model alone (edge mode, offline fallback): not verified
    PROVISIONAL = "provisional"  # the local model's while the cloud was away, to be verified when it returns


def runs(sources: Iterable[Source]) -> list[dict]:
    """Run-length form, in order: [{"source": "accepted", "tokens": 3}, {"source": "cloud", ...}]."""
    out: list[dict] = []
    for source in sources:
        if out and out[-1]["source"] == source.value:
            out[-1]["tokens"] += 1
        else:
            out.append({"source": source.value, "tokens": 1})
    return out


def totals(sources: Iterable[Source]) -> dict[str, int]:
    """Tokens per source, every source listed: {"accepted": 40, "cloud": 9, "local": 0}."""
    counts = {source.value: 0 for source in Source}
    for source in sources:
        counts[source.value] += 1
    return counts
