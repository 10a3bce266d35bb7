"""Continuous batching is invisible to each session: batched output equals the output alone.

A float64 tiny target (so the only difference batching may make, the order of the linear
layers' sums, stays far below any logit margin) serves many sessions through one Scheduler.
Each session's drafts are its reference continuation corrupted at keyed positions, so blocks
have ragged lengths and rejections happen at many positions. Alone: one session at a time,
every prompt prefilled in one chunk. Batched: all at once with a small token budget (long
prompts prefilled in chunks beside other sessions' blocks), sessions joining late and
leaving early, one cancelled mid-run, Generate and Speculate sessions in the same passes.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from bench.tiny_models import build_tiny_target

from cloud.limits import SessionLimits
from cloud.scheduler import NoMetrics, Scheduler
from cloud.session import VerifierSession
from common.wire import DraftBlock, DraftMode, SamplingParams, SessionOpen

GREEDY = SamplingParams(temperature=0.0, seed=0)
SAMPLED = SamplingParams(temperature=1.0, top_k=0, top_p=0.9, seed=0)


@pytest.fixture(scope="module")
def f64_target(tiny_models, tmp_path_factory):
    from cloud.model import LoadOptions, TargetModel

    tokenizer_dir = tiny_models.target_dir  # the tiny target's saved tokenizer
    out = build_tiny_target(tmp_path_factory.mktemp("f64") / "target", tokenizer_dir, seed=3, dtype="float64")
    return TargetModel.load(str(out), LoadOptions(device="cpu", dtype="float64", threads=1))


class StepLog(NoMetrics):
    def __init__(self):
        self.sessions: list[int] = []  # per pass: sessions in it
        self.tokens: list[int] = []  # per pass: tokens in it

    def step(self, sessions, tokens, seconds):
        self.sessions.append(sessions)
        self.tokens.append(tokens)


def open_request(model, prompt, max_new, sampling, mode=DraftMode.TOKEN_IDS) -> SessionOpen:
    return SessionOpen(prompt_token_ids=prompt, max_new_tokens=max_new, sampling=sampling,
                       tokenizer_fingerprint=model.fingerprint, draft_mode=mode)


async def generate(scheduler, model, prompt, max_new, sampling) -> list[int]:
    session = VerifierSession(model, open_request(model, prompt, max_new, sampling), SessionLimits(), None,
                              scheduler.kv)
    try:
        return [t.token_id async for t in scheduler.generate(session) if t.token_id is not None]
    finally:
        await scheduler.close(session)


async def speculate(scheduler, model, prompt, max_new, sampling, reference, key, stop_after=None) -> list[int]:
    """Drafts `reference` corrupted at keyed positions (~30%), in blocks of 1 to 6 drafts."""
    session = VerifierSession(model, open_request(model, prompt, max_new, sampling), SessionLimits(), None,
                              scheduler.kv)
    try:
        started = await scheduler.start(session)
        tokens = [started.token_id] if started.token_id is not None else []
        finished = started.finish_reason
        while not finished and (stop_after is None or len(tokens) < stop_after):
            rng = random.Random(f"{key}:{len(tokens)}")
            k = rng.randint(0, 6)
            drafts = [reference[i] if rng.random() > 0.3 else (reference[i] + 1 + rng.randrange(50)) % model.vocab_size
                      for i in range(len(tokens), min(len(tokens) + k, len(reference)))]
            verdict = await scheduler.verify(session, DraftBlock(len(prompt) + len(tokens) - 1, [tokens[-1], *drafts]))
            assert not verdict.stale
            tokens += drafts[: verdict.accepted_count]
            tokens += [verdict.next_token] if verdict.next_token is not None else []
            finished = verdict.finish_reason
        return tokens
    finally:
        await scheduler.close(session)


def prompts(model, count):
    rng = random.Random(7)
    lengths = [3, 40, 90, 5, 17, 64, 8, 120, 2, 33][:count]
    return [[rng.randrange(model.vocab_size) for _ in range(n)] for n in lengths]


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_each_session_batched_equals_the_session_alone(f64_target, sampling):
    model = f64_target
    cases = [(prompt, 12 + 5 * i, SamplingParams(sampling.temperature, sampling.top_k, sampling.top_p, seed=100 + i))
             for i, prompt in enumerate(prompts(model, 10))]

    alone = Scheduler(model, max_batch_tokens=4096)
    try:
        async def run_alone():
            refs = [await generate(alone, model, p, n, s) for p, n, s in cases]
            specs = [await speculate(alone, model, p, n, s, ref, key=i) for i, ((p, n, s), ref) in enumerate(zip(cases, refs))]
            return refs, specs
        references, alone_specs = asyncio.run(run_alone())
    finally:
        alone.shutdown()
    assert alone_specs == references  # speculation alone is the target's own output
    assert len({len(r) for r in references}) > 1 or all(len(r) == n for (_, n, _), r in zip(cases, references))

    log = StepLog()
    batched = Scheduler(model, max_batch_tokens=24, metrics=log)
    try:
        async def run_batched():
            async def late(delay_steps, coro):
                while len(log.sessions) < delay_steps:  # join after some passes ran
                    await asyncio.sleep(0.001)
                return await coro

            tasks = []
            for i, ((p, n, s), ref) in enumerate(zip(cases, references)):
                if i % 3 == 2:
                    coro = generate(batched, model, p, n, s)
                else:
                    coro = speculate(batched, model, p, n, s, ref, key=i)
                tasks.append(asyncio.ensure_future(late(3 * (i % 4), coro)))
            cancelled = asyncio.ensure_future(speculate(batched, model, cases[1][0], 200, cases[1][2], references[1],
                                                        key="cancelled"))
            leaver = asyncio.ensure_future(speculate(batched, model, cases[7][0], cases[7][1], cases[7][2],
                                                     references[7], key="leaver", stop_after=3))
            while len(log.sessions) < 6:
                await asyncio.sleep(0.001)
            cancelled.cancel()
            results = await asyncio.gather(*tasks)
            left = await leaver
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            return results, left
        results, left = asyncio.run(run_batched())
    finally:
        batched.shutdown()
    assert results == references
    assert left == references[7][: len(left)] and len(left) >= 3
    assert max(log.sessions) >= 4, log.sessions  # passes really held many sessions
    assert max(log.tokens) == 24, log.tokens  # max_batch_tokens held, and filled (by prompt chunks)
    assert batched.kv.allocator.used == 0  # every session's blocks came back, the cancelled one's too


def test_an_error_or_a_cancellation_in_a_batch_leaves_its_batch_mates_alone(f64_target):
    """A bad block fails its own session only; a cancelled one is freed; the others run on unchanged."""
    from common.errors import InvalidArgument

    model = f64_target
    cases = [(prompt, 30, GREEDY) for prompt in prompts(model, 4)]
    log = StepLog()
    scheduler = Scheduler(model, max_batch_tokens=64, metrics=log)

    async def bad_session(prompt):
        session = VerifierSession(model, open_request(model, prompt, 30, GREEDY), SessionLimits(), None, scheduler.kv)
        try:
            started = await scheduler.start(session)
            verdict = await scheduler.verify(session, DraftBlock(len(prompt), [started.token_id]))
            while len(log.sessions) < 4:  # let a few batched passes run
                await asyncio.sleep(0.001)
            bad = DraftBlock(len(prompt) + 1, [verdict.next_token, model.vocab_size + 5])
            with pytest.raises(InvalidArgument, match="outside the vocabulary"):
                await scheduler.verify(session, bad)
        finally:
            await scheduler.close(session)

    try:
        async def run():
            references = [await generate(scheduler, model, p, n, s) for p, n, s in cases]
            passes_alone = len(log.sessions)
            log.sessions.clear()
            good = [asyncio.ensure_future(generate(scheduler, model, p, n, s)) for p, n, s in cases]
            bad = asyncio.ensure_future(bad_session(cases[0][0]))
            doomed = asyncio.ensure_future(speculate(scheduler, model, cases[1][0], 200, GREEDY, references[1], key=1))
            while len(log.sessions) < 3:
                await asyncio.sleep(0.001)
            doomed.cancel()
            results = await asyncio.gather(*good)
            await bad
            return references, results, passes_alone
        references, results, passes_alone = asyncio.run(run())
    finally:
        scheduler.shutdown()
    assert results == references
    assert max(log.sessions) >= 3  # the failing and cancelled sessions shared passes with the others
    assert max(log.tokens) <= 64, log.tokens
    # Nothing was retried or redone: the good sessions needed no more passes than alone, shared.
    assert len(log.sessions) <= passes_alone
    assert scheduler.kv.allocator.used == 0
