"""Provisional tokens verified when the cloud returns (edge/offline.py).

The Reconciler's rules by hand (no model, no clock); then end to end: a real cloud behind the
link relay, cut for the middle ~40% of a 200-token answer while the local model goes on writing.
The final ids must equal those of an answer that was never cut (greedy and seeded sampling), the
rewind must land on the first provisional token the target disagrees with, and the confirmed
provisional tokens must be counted.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import hf_greedy

from bench.relay import LinkConfig, RelayThread
from edge.config import EdgeConfig
from edge.fallback import FallbackConfig
from edge.offline import Reconciler, Rewind, Verified
from edge.provenance import Source
from edge.sdk import AsyncTandemClient

A, C, P = Source.ACCEPTED, Source.CLOUD, Source.PROVISIONAL


def test_matching_pieces_verify_the_provisional_tokens_then_new_ones_follow():
    r = Reconciler(5, [1, 2, 3])
    assert r.take(C, [1]) == [Verified(5, 1, C)]
    assert r.take(A, [2, 3, 4]) == [Verified(6, 2, A), (A, [4])]
    assert r.take(C, [9]) == [(C, [9])] and r.verified == 3 and r.retracted == 0 and r.finish() == []


def test_the_first_disagreement_retracts_the_rest():
    r = Reconciler(5, [1, 2, 3, 4])
    assert r.take(A, [1, 7, 8]) == [Verified(5, 1, A), Rewind(6, [2, 3, 4]), (A, [7, 8])]
    assert r.verified == 1 and r.retracted == 3 and r.pending == []
    first = Reconciler(0, [1, 2])
    assert first.take(C, [3]) == [Rewind(0, [1, 2]), (C, [3])]


def test_an_answer_that_ends_before_the_provisional_tokens_retracts_them():
    r = Reconciler(2, [1, 2, 3])
    assert r.take(C, [1]) == [Verified(2, 1, C)]
    assert r.finish() == [Rewind(3, [2, 3])] and r.retracted == 2


# --- end to end -----------------------------------------------------------------------------------

MAX_TOKENS, CUT_AT, BACK_AT = 200, 60, 140  # the cloud is away for tokens 60..140: the middle 40%
PROMPT = "Once upon a time, in a lighthouse by the sea,"


def edge_config(relay, tiny_models, draft: str) -> EdgeConfig:
    return EdgeConfig(cloud=f"127.0.0.1:{relay.port}", draft_model=str(tiny_models.drafts[draft]), threads=1,
                      n_ctx=1024, connect_timeout_s=2.0,
                      fallback=FallbackConfig(timeout_s=1.0, retry_min_s=0.1, retry_max_s=0.3))


async def answer(tandem: AsyncTandemClient, prompt_ids: list[int], relay=None, **options):
    """Streams one answer with offline="rewind"; with `relay`, cuts the link at CUT_AT tokens and
    heals it at BACK_AT (holding the stream there until the edge has seen the cloud back).
    Returns (final ids, the Deltas, the ids shown just before each rewind, the generation)."""
    from edge.engine import Generation, Mode

    generation = Generation(Mode.HYBRID)
    ids, deltas, before_rewind, cut, healed = [], [], [], False, False
    async for delta in tandem.deltas(prompt_ids, generation, offline="rewind", max_tokens=MAX_TOKENS, **options):
        deltas.append(delta)
        if delta.rewind_to is not None:
            before_rewind.append(list(ids))
            del ids[delta.rewind_to:]
        ids += delta.token_ids
        if relay is not None and not cut and len(ids) >= CUT_AT:
            relay.set_config(LinkConfig(one_way_delay_s=600.0))  # silent: nothing errors, nothing arrives
            relay.drop_connections()
            cut = True
        if relay is not None and cut and not healed and len(ids) >= BACK_AT and generation.provisional_from:
            relay.set_config(LinkConfig())
            relay.drop_connections()
            healed = True
            deadline = time.monotonic() + 30
            while tandem.engine.cloud.state.value != "up":
                assert time.monotonic() < deadline, "the edge never saw the cloud back"
                await asyncio.sleep(0.05)
    assert ids == generation.token_ids
    if relay is not None:
        assert healed, "the answer ended before the cloud was cut and healed"
    return ids, deltas, before_rewind, generation


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.9, top_p=0.95, seed=1234)],
                         ids=["greedy", "seeded-sampling"])
def test_cut_mid_answer_ends_exactly_as_the_uncut_answer(tiny_cloud, tiny_models, tiny_target, tiny_drafter,
                                                         sampling):
    host, port = tiny_cloud.address.rsplit(":", 1)

    async def main():
        with RelayThread((host, int(port))) as relay:
            async with AsyncTandemClient(config=edge_config(relay, tiny_models, "noisy")) as tandem:
                prompt_ids = tandem.encode(PROMPT)
                uncut = await answer(tandem, prompt_ids, **sampling)
                cut = await answer(tandem, prompt_ids, relay, **sampling)
            return prompt_ids, uncut, cut

    prompt_ids, (uncut_ids, _, uncut_rewinds, _), (ids, deltas, before_rewind, generation) = asyncio.run(main())
    if not sampling:
        assert uncut_ids == hf_greedy(tiny_target, prompt_ids, MAX_TOKENS)
    assert not uncut_rewinds
    assert ids == uncut_ids  # exact: as if the cloud had never gone
    stats = generation.stats
    assert stats.provisional >= 20 and stats.reconnects_in_answer == 1, stats
    assert generation.degraded is False and generation.provisional_from is None
    assert generation.sources.count(P) == 0 and generation.sources.count(Source.LOCAL) == 0
    assert stats.tokens == len(ids)
    # The provisional tokens as shown, from where the local model took over.
    start = [i for i, d in enumerate(deltas) if d.source == P][0]
    first_provisional = sum(len(d.token_ids) for d in deltas[:start])
    shown = before_rewind[0] if before_rewind else ids
    provisional = shown[first_provisional:]
    agree = next((i for i, (a, b) in enumerate(zip(provisional, uncut_ids[first_provisional:])) if a != b),
                 len(provisional))
    if agree < len(provisional):  # the target disagreed: one rewind, exactly there
        rewinds = [d for d in deltas if d.rewind_to is not None]
        assert [d.rewind_to for d in rewinds] == [first_provisional + agree] == generation.rewinds
        assert stats.provisional_rewritten == len(provisional) - agree
    assert stats.provisional_accepted == agree
    assert stats.provisional_accepted + stats.provisional_rewritten == stats.provisional
    verified = [d.verified_to for d in deltas if d.verified_to is not None]
    assert (max(verified) if verified else first_provisional) == first_provisional + agree
    assert stats.verify_s > 0


def test_a_draft_with_the_targets_weights_gets_its_provisional_tokens_accepted(tiny_cloud, tiny_models, tiny_target):
    """The target's weights in the draft (llama.cpp's f16 cache and batching still flip a rare token):
    provisional tokens are confirmed, not thrown away, and the answer is exact."""
    host, port = tiny_cloud.address.rsplit(":", 1)

    async def main():
        with RelayThread((host, int(port))) as relay:
            async with AsyncTandemClient(config=edge_config(relay, tiny_models, "exact")) as tandem:
                prompt_ids = tandem.encode(PROMPT)
                return prompt_ids, await answer(tandem, prompt_ids, relay)

    prompt_ids, (ids, deltas, before_rewind, generation) = asyncio.run(main())
    assert ids == hf_greedy(tiny_target, prompt_ids, MAX_TOKENS)
    stats = generation.stats
    assert len(before_rewind) == len(generation.rewinds) <= 1
    assert stats.provisional_accepted + stats.provisional_rewritten == stats.provisional >= 20, stats
    assert stats.provisional_accepted >= 5, stats  # the first tokens after the cut, at least, were the target's


# --- an answer finished offline, checked when the cloud is back -----------------------------------

@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.9, top_p=0.95, seed=99)],
                         ids=["greedy", "seeded-sampling"])
def test_an_answer_finished_offline_is_verified_later(tiny_cloud, tiny_models, tiny_target, sampling):
    """The cloud is away for the whole answer and back before the next turn: the answer is marked
    provisional, then checked as a history prefix: verified exact, or where it differs, with the
    cloud model's answer on offer, which is the answer an uninterrupted hybrid run gives."""
    host, port = tiny_cloud.address.rsplit(":", 1)
    max_tokens = 60

    async def main():
        with RelayThread((host, int(port))) as relay:
            async with AsyncTandemClient(config=edge_config(relay, tiny_models, "noisy")) as tandem:
                prompt_ids = tandem.encode(PROMPT)
                reference = [t async for d in tandem.deltas(prompt_ids, max_tokens=max_tokens, **sampling)
                             for t in d.token_ids]
                relay.set_config(LinkConfig(one_way_delay_s=600.0))
                relay.drop_connections()
                from edge.engine import Generation, Mode
                offline = Generation(Mode.HYBRID)
                shown = [d async for d in tandem.deltas(prompt_ids, offline, offline="rewind", max_tokens=max_tokens,
                                                        **sampling)]
                relay.set_config(LinkConfig())
                relay.drop_connections()
                deadline = time.monotonic() + 30
                while tandem.engine.cloud.state.value != "up":
                    assert time.monotonic() < deadline, "the edge never saw the cloud back"
                    await asyncio.sleep(0.05)
                check = await tandem.verify(prompt_ids, offline.token_ids, max_tokens=max_tokens, **sampling)
            return prompt_ids, reference, offline, shown, check

    prompt_ids, reference, offline, shown, check = asyncio.run(main())
    if not sampling:
        assert reference == hf_greedy(tiny_target, prompt_ids, max_tokens)
    assert offline.degraded and offline.fallback_at == 0 and offline.provisional_from == 0
    assert all(d.source == P for d in shown if d.token_ids) and not any(d.rewind_to is not None for d in shown)
    answer = offline.token_ids
    first_difference = next((i for i, (a, b) in enumerate(zip(answer, reference)) if a != b), None)
    if first_difference is None and len(answer) != len(reference):
        first_difference = min(len(answer), len(reference))
    assert check.differs_at == first_difference
    assert check.exact == (first_difference is None)
    assert check.state == ("verified exact" if check.exact else f"differs from position {first_difference}")
    assert check.token_ids == reference  # the cloud model's answer, whichever way it went
    assert check.stats["provisional_accepted"] == (len(answer) if check.exact else first_difference)


def test_hold_releases_only_text_no_rewind_can_retract():
    """offline="hold" over a scripted rewinding stream: released text only ever grows, equals the
    final text, and nothing provisional is released before it is verified."""
    from edge.engine import Generation, Mode
    from edge.sdk import Delta, held

    generation = Generation(Mode.HYBRID)
    script = [  # (delta, provisional_from after it)
        (Delta("Hello", [1], False, Source.CLOUD), None),
        (Delta(" wor", [2], True, P), 1),
        (Delta("ld", [3], True, P), 1),
        (Delta("", [], True, Source.ACCEPTED, verified_to=2), 2),
        (Delta("", [], True, rewind_to=2, rewind_text_to=9), None),
        (Delta("k", [9], False, Source.CLOUD), None),
        (Delta(" again", [4], True, P), 4),
    ]

    async def deltas():
        for delta, provisional_from in script:
            generation.provisional_from = provisional_from
            yield delta

    async def main():
        return [d async for d in held(deltas(), generation)]

    released = asyncio.run(main())
    assert [d.text for d in released] == ["Hello", " work", " again"]  # the last: the answer ended offline
    assert [d.token_ids for d in released] == [[1], [2, 9], [4]]
    assert all(d.rewind_to is None for d in released)
