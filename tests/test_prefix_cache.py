"""The cloud's prefix cache: repeated prompts skip the model, a chat's next turn prefills only what is new,
and no output changes."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import numpy as np
import pytest
from conftest import hf_greedy
from test_batching import GREEDY, f64_target, open_request  # noqa: F401 - f64_target is a fixture
from test_sampled_exact import generate_many

from cloud.blocks import BlockAllocator, BlockTable
from cloud.limits import SessionLimits
from cloud.prefix_cache import PrefixCache
from cloud.scheduler import NoMetrics, Scheduler
from cloud.session import VerifierSession
from common.wire import DraftBlock
from edge.engine import Mode

PROMPT = "The quick brown fox"
SEEDS = range(1, 41)


@pytest.fixture(scope="module")
def cached_cloud(tiny_target):
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=64), model=tiny_target) as cloud:
        yield cloud


def prefix_cache(cloud) -> PrefixCache:
    return cloud.running.service.prefix_cache


@pytest.mark.parametrize("mode", [Mode.HYBRID, Mode.CLOUD])
def test_sampling_many_completions_of_one_prompt_reuses_the_cache_and_changes_nothing(cached_cloud, tiny_cloud,
                                                                                     tiny_drafter, mode):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    sampling = dict(temperature=1.0, top_k=0, top_p=0.95, max_new_tokens=2, mode=mode)
    cache = prefix_cache(cached_cloud)
    hits_before = cache.hits
    cached = asyncio.run(generate_many(cached_cloud.address, drafter, prompt, SEEDS, **sampling))
    cold = asyncio.run(generate_many(tiny_cloud.address, drafter, prompt, SEEDS, **sampling))
    assert [run.token_ids for run in cached] == [run.token_ids for run in cold]  # bit-exact snapshots
    assert len({tuple(run.token_ids) for run in cached}) > 1  # the completions really vary
    # Every session after the first finds the prompt, and most find their first step too.
    assert cache.hits - hits_before >= len(SEEDS) - 1 + len(SEEDS) // 2


def test_greedy_output_is_the_target_s_with_the_cache_warm(cached_cloud, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize("def fibonacci(n):")
    reference = hf_greedy(tiny_target, prompt, 20)
    for mode in (Mode.HYBRID, Mode.CLOUD, Mode.HYBRID):
        run = asyncio.run(generate_many(cached_cloud.address, drafter, prompt, [0], temperature=0.0,
                                        max_new_tokens=20, mode=mode, draft_tokens=4))[0]
        assert run.token_ids == reference


def test_a_long_generation_adds_at_most_one_snapshot_beyond_the_shared_prefix(cached_cloud, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize("A prompt used by this test only")
    cache = prefix_cache(cached_cloud)
    snapshots_before, entries_before = cache.snapshots, len(cache)
    seeds = range(100, 105)
    asyncio.run(generate_many(cached_cloud.address, drafter, prompt, seeds, temperature=1.0, top_k=0,
                              max_new_tokens=12, mode=Mode.CLOUD))
    # The prompt, then at most one first step per later session; none of the 11 later steps.
    assert cache.snapshots - snapshots_before <= len(seeds)
    # Besides, each finished session leaves at most its history (a prefix entry, for a next turn).
    assert len(cache) - entries_before <= 2 * len(seeds)


class Held:
    """Stands in for a snapshot's block table: counts its release."""

    def __init__(self):
        self.released = 0

    def release(self):
        self.released += 1


@pytest.fixture(scope="module")
def screened_clouds(tiny_models):
    """(cached, cold): the tiny target with its greedy ids screened (cloud/greedy_head.py), whose
    snapshots keep a hidden state instead of logits, with the prefix cache and without."""
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from cloud.model import LoadOptions, TargetModel

    target = TargetModel.load(str(tiny_models.target_dir), LoadOptions(device="cpu", threads=1, greedy_head="screened"))
    assert target.screened_head is not None
    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=64), model=target) as cached, \
            EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=target) as cold:
        yield target, cached, cold


@pytest.mark.parametrize("mode", [Mode.HYBRID, Mode.CLOUD])
def test_a_screened_target_s_snapshots_change_nothing(screened_clouds, tiny_drafter, mode):
    target, cached_cloud, cold_cloud = screened_clouds
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    sampling = dict(temperature=1.0, top_k=0, top_p=0.95, max_new_tokens=2, mode=mode)
    hits_before = prefix_cache(cached_cloud).hits
    cached = asyncio.run(generate_many(cached_cloud.address, drafter, prompt, SEEDS, **sampling))
    cold = asyncio.run(generate_many(cold_cloud.address, drafter, prompt, SEEDS, **sampling))
    assert [run.token_ids for run in cached] == [run.token_ids for run in cold]
    assert prefix_cache(cached_cloud).hits - hits_before >= len(SEEDS) - 1
    greedy_prompt = drafter.tokenize("def fibonacci(n):")
    for _ in range(2):  # cold, then from the snapshot
        run = asyncio.run(generate_many(cached_cloud.address, drafter, greedy_prompt, [0], temperature=0.0,
                                        max_new_tokens=20, mode=mode, draft_tokens=4))[0]
        assert run.token_ids == hf_greedy(target, greedy_prompt, 20)


def test_least_recently_used_snapshots_go_first_and_memory_stays_bounded():
    logits = np.zeros(10, dtype=np.float32)
    per_entry = 4 * 100 + logits.nbytes
    cache = PrefixCache(max_bytes=3 * per_entry, kv_bytes_per_token=100)
    held = {key: Held() for key in ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16))}
    for key in list(held)[:3]:
        cache.put(key, held[key], logits)
    assert cache.get([1, 2, 3, 4]) is not None  # now the most recently used
    cache.put([13, 14, 15, 16], held[(13, 14, 15, 16)], logits)
    assert cache.get([5, 6, 7, 8]) is None and cache.get([1, 2, 3, 4]) is not None
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert [h.released for h in held.values()] == [0, 1, 0, 0]  # the evicted snapshot's blocks are freed
    too_big = Held()
    cache.put(list(range(1000)), too_big, logits)  # larger than the whole budget: not kept
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes and too_big.released == 1


# --- a growing history: the next turn reuses the longest cached prefix --------------------------------


def table_of(allocator, length):
    table = BlockTable(allocator)
    table.extend(length)
    return table


def test_prefix_entries_serve_the_longest_common_prefix_never_an_exact_hit_and_free_their_blocks():
    allocator = BlockAllocator(64, block_size=4)
    cache = PrefixCache(max_bytes=40 * 10, kv_bytes_per_token=10)
    history = list(range(20))
    cache.put(history, table_of(allocator, 20))  # a finished turn: prefix entry, no logits
    assert cache.get(history) is None  # never an exact hit: it has no logits
    assert cache.longest_prefix([*history[:13], 99, 98])[0] == 13
    assert cache.longest_prefix([*history, 7])[0] == 20
    assert cache.longest_prefix([50, 51]) is None
    assert not cache.would_store(history[:10], 0)  # covered by the cached history: not stored twice
    shorter = table_of(allocator, 10)
    cache.put(history[:10], shorter)
    assert len(cache) == 1 and allocator.used == 5  # refused, and its blocks released
    longer = [*history, 20, 21, 22]
    cache.put(longer, table_of(allocator, 23))  # covers the first entry, which goes
    assert len(cache) == 1 and cache.longest_prefix(history)[0] == 20 and allocator.used == 6
    cache.put([7, 7, 7], table_of(allocator, 3), np.zeros(4, dtype=np.float32))  # a snapshot beside it
    assert cache.get([7, 7, 7]) is not None and allocator.used == 7
    cache.put(list(range(100, 130)), table_of(allocator, 30))  # 300 bytes: evicts the least recently used
    assert cache.bytes <= cache.max_bytes and cache.longest_prefix(history) is None
    assert allocator.used == 8 + 1  # the evicted history's 6 blocks came back
    cache.clear()
    assert allocator.used == 0 and cache.bytes == 0


def chat_session(model, scheduler, cache, prompt, max_new):
    return VerifierSession(model, open_request(model, prompt, max_new, GREEDY), SessionLimits(), cache, scheduler.kv)


async def generate_turn(scheduler, session) -> list[int]:
    try:
        return [t.token_id async for t in scheduler.generate(session) if t.token_id is not None]
    finally:
        await scheduler.close(session)


async def speculate_turn(scheduler, session, reference) -> list[int]:
    """Drafts `reference` with every third draft wrong, in blocks of 4, so rejections happen."""
    prompt = session.request.prompt_token_ids
    try:
        started = await scheduler.start(session)
        tokens, finished = [started.token_id], started.finish_reason
        while not finished:
            drafts = [t if (len(tokens) + i) % 3 else (t + 1) % session.model.vocab_size
                      for i, t in enumerate(reference[len(tokens): len(tokens) + 4])]
            verdict = await scheduler.verify(session, DraftBlock(len(prompt) + len(tokens) - 1, [tokens[-1], *drafts]))
            tokens += drafts[: verdict.accepted_count] + [verdict.next_token] * (verdict.next_token is not None)
            finished = verdict.finish_reason
        return tokens
    finally:
        await scheduler.close(session)


class TokenLog(NoMetrics):
    def __init__(self):
        self.tokens: list[int] = []

    def step(self, sessions, tokens, seconds):
        self.tokens.append(tokens)


def test_a_chat_s_next_turn_prefills_only_what_is_new_and_answers_exactly_the_target_s(f64_target):
    """Turns alternate Generate and Speculate; each prompt is the last one + its answer + a new message."""
    model, rng = f64_target, random.Random(5)
    cache = PrefixCache(64 << 20, model.kv_bytes_per_token)
    log = TokenLog()
    scheduler = Scheduler(model, max_batch_tokens=16, metrics=log)  # chunked prefills, splits mid-block
    new_message = lambda n: [rng.randrange(model.vocab_size) for _ in range(n)]  # noqa: E731
    try:
        async def chat():
            prompt, max_new = new_message(37), 11
            for turn in range(4):
                reference = hf_greedy(model, prompt, max_new)
                session = chat_session(model, scheduler, cache, prompt, max_new)
                log.tokens.clear()
                if turn % 2:
                    answer = await speculate_turn(scheduler, session, reference)
                    assert session.reused_tokens == len(prompt) - 1 - len(user)
                else:
                    answer = await generate_turn(scheduler, session)
                    fed = sum(log.tokens) - (len(answer) - 1)  # every decoding step feeds one token
                    assert fed == len(prompt) - session.reused_tokens
                    if turn:
                        assert session.reused_tokens == len(prompt) - 1 - len(user)
                assert answer == reference
                # The history the cache holds now: the prompt and every answer token but the last
                # (never fed). The next turn sends the whole answer and a new message.
                user = new_message(5 + turn)
                prompt = [*prompt, *answer, *user]
            return prompt

        prompt = asyncio.run(chat())

        async def branches():
            """Two next turns at once from one history: both write into its shared last block."""
            base = prompt[: len(prompt) - 9]
            prompts = [[*base, *new_message(3)], [*base, *new_message(6)]]
            sessions = [chat_session(model, scheduler, cache, p, 9) for p in prompts]
            answers = await asyncio.gather(*(generate_turn(scheduler, s) for s in sessions))
            return prompts, answers, sessions

        prompts, answers, sessions = asyncio.run(branches())
        assert [s.reused_tokens for s in sessions] == [len(prompt) - 9] * 2 and (len(prompt) - 9) % 16
        assert answers == [hf_greedy(model, p, 9) for p in prompts]
        assert cache.prefix_hits == 5
        asyncio.run(scheduler.run(cache.clear))
        assert scheduler.kv.allocator.used == 0  # the cache's entries held the only blocks left
    finally:
        scheduler.shutdown()


def test_evicting_histories_releases_their_blocks(f64_target):
    """A cache with room for about one history: chats come and go, blocks never pile up."""
    model, rng = f64_target, random.Random(9)
    cache = PrefixCache(60 * model.kv_bytes_per_token + 4 * model.vocab_size, model.kv_bytes_per_token)
    scheduler = Scheduler(model, max_batch_tokens=64)
    allocator = scheduler.kv.allocator
    try:
        async def chats():
            for _ in range(6):
                prompt = [rng.randrange(model.vocab_size) for _ in range(rng.randrange(20, 45))]
                await generate_turn(scheduler, chat_session(model, scheduler, cache, prompt, 10))
                held = {block for table in cache.tables() for block in table.blocks}
                assert allocator.used == len(held)  # only the cache holds blocks between chats
                assert cache.bytes <= cache.max_bytes and len(cache) <= 2  # older chats were evicted
            await scheduler.run(cache.clear)

        asyncio.run(chats())
        assert allocator.used == 0
    finally:
        scheduler.shutdown()


class FailingPass:
    """The f64 target whose `fail_at`-th forward pass breaks inside the model, after the pass has
    made room for its tokens in the block tables but before their keys and values are written
    (a device error, say): the pool it is given has no layers to read or write."""

    class _NoLayers:
        def __init__(self, pool):
            self._pool = pool

        def __getattr__(self, name):
            if name in ("keys", "values"):
                raise RuntimeError("the device went away")
            return getattr(self._pool, name)

    def __init__(self, target, fail_at: int):
        self._target, self.fail_at, self.passes = target, fail_at, 0

    def forward_batch(self, pool, segments):
        self.passes += 1
        if self.passes == self.fail_at:
            pool = dataclasses.replace(pool, storage=self._NoLayers(pool.storage))
        return self._target.forward_batch(pool, segments)

    def __getattr__(self, name):
        return getattr(self._target, name)


def test_a_session_whose_pass_failed_leaves_no_history_to_reuse(f64_target):
    """A failed pass rolls its tables back (TargetModel.forward_batch), so the history a broken session
    leaves holds only KV that was written, and a next turn never starts from keys nobody computed."""
    rng = random.Random(11)
    model = FailingPass(f64_target, fail_at=2)  # the prompt's prefill works, the first decoding step fails
    cache = PrefixCache(64 << 20, f64_target.kv_bytes_per_token)
    scheduler = Scheduler(model, max_batch_tokens=64)
    prompt = [rng.randrange(f64_target.vocab_size) for _ in range(37)]
    try:
        async def broken_then_next_turn():
            session = chat_session(model, scheduler, cache, prompt, 8)
            with pytest.raises(RuntimeError, match="device went away"):
                await generate_turn(scheduler, session)
            first = session.tokens[len(prompt)]  # committed by the prefill; its KV write failed
            following = [*prompt, first, *(rng.randrange(f64_target.vocab_size) for _ in range(5))]
            nxt = chat_session(model, scheduler, cache, following, 8)
            return following, await generate_turn(scheduler, nxt), nxt.reused_tokens

        following, answer, reused = asyncio.run(broken_then_next_turn())
        assert reused == len(prompt)  # the prompt's own snapshot (written by a pass that worked), no more
        assert answer == hf_greedy(f64_target, following, 8)
    finally:
        scheduler.shutdown()
