"""The KV pool is bounded: sized once from the budget, the single source of admission, the
prefix cache evicted before a session could run out of blocks. Block tables copy on write.

The bookkeeping tests need no model; the end-to-end ones run the numpy ScriptedTarget of
tests/test_engine_protocols.py through the real gRPC service, so a session that ran out of
blocks mid-pass would show as a failed call.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from test_engine_protocols import GREEDY, ScriptedTarget, continuation, generate, prompts, scripted_cloud
from test_limits import wait_for

from cloud.blocks import BLOCK_SIZE, BlockAllocator, BlockTable, PoolExhausted
from cloud.prefix_cache import PrefixCache
from common.errors import ResourceExhausted
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc

# --- block tables: copy on write --------------------------------------------------------------


def test_extend_copies_a_shared_partly_filled_last_block_before_writing_into_it():
    allocator = BlockAllocator(8, block_size=4)
    table = BlockTable(allocator)
    assert table.extend(6) == [] and table.blocks == [0, 1] and allocator.used == 2
    snapshot = table.fork()
    assert allocator.shared(0) and allocator.shared(1) and allocator.used == 2

    copies = table.extend(3)  # writes positions 6..8: into the shared block 1, then a new one
    assert copies == [(1, table.blocks[1])] and table.blocks[1] not in (0, 1)
    assert table.blocks[0] == 0 and allocator.shared(0)  # the full first block is still shared: nobody writes it
    assert not allocator.shared(1) and snapshot.blocks == [0, 1] and snapshot.length == 6  # the snapshot is intact
    assert table.length == 9 and len(table.blocks) == 3 and allocator.used == 4

    assert table.extend(1) == []  # its own blocks now: no further copy
    snapshot.release()
    table.release()
    assert allocator.used == 0 and allocator.free == 8


def test_extend_copies_nothing_at_a_block_boundary_or_from_an_unshared_block():
    allocator = BlockAllocator(8, block_size=4)
    table = BlockTable(allocator)
    table.extend(8)
    snapshot = table.fork()
    assert table.extend(2) == [] and table.blocks[:2] == snapshot.blocks  # the shared blocks are full: read only
    own = BlockTable(allocator)
    own.extend(3)
    assert own.extend(3) == []  # nobody else holds its block


def test_a_truncated_fork_copies_the_block_it_writes_into():
    """A session reusing a cached prefix: fork, cut back mid-block, then write (cloud/session.py)."""
    allocator = BlockAllocator(8, block_size=4)
    history = BlockTable(allocator)
    history.extend(10)
    session = history.fork()
    session.truncate(5)  # keeps blocks 0 and 1, the second one partly
    assert session.blocks == history.blocks[:2] and allocator.used == 3
    copies = session.extend(2)
    assert copies == [(history.blocks[1], session.blocks[1])]
    assert session.blocks[0] == history.blocks[0] and history.length == 10


def test_copy_on_write_in_a_full_pool_takes_the_cache_s_block_back():
    """The shared block is let go before its copy is allocated: with the pool full and the other
    holder a cache entry, evicting that entry frees the very block, and nothing needs copying."""
    allocator = BlockAllocator(2, block_size=4)
    cache = PrefixCache(1 << 20, kv_bytes_per_token=1)
    cache.attach(allocator)
    session = BlockTable(allocator)
    session.extend(6)
    cache.put([1, 2, 3, 4, 5, 6], session.fork())  # the cache shares both blocks
    assert allocator.free == 0
    assert session.extend(1) == []  # the eviction freed block 1, which the session takes back as its own
    assert len(cache) == 0 and cache.evictions == 1 and session.blocks == [0, 1] and allocator.used == 2


# --- the bounded pool -------------------------------------------------------------------------


def test_the_pool_never_grows_and_evicts_the_cache_oldest_first_before_refusing():
    allocator = BlockAllocator(4, block_size=2, block_bytes=1 << 18)
    cache = PrefixCache(1 << 30, kv_bytes_per_token=1)
    cache.attach(allocator)
    old, new = BlockTable(allocator), BlockTable(allocator)
    old.extend(4)
    new.extend(2)
    cache.put([1, 2, 3, 4], old)  # two blocks, least recently used
    cache.put([9, 9], new)
    session = BlockTable(allocator)
    session.extend(2)  # the last free block
    session.extend(4)  # two more: the oldest entry goes, the newer one stays
    assert allocator.capacity == 4 and len(cache) == 1 and cache.longest_prefix([9, 9])[0] == 2
    session.extend(2)
    assert len(cache) == 0 and cache.evictions == 2
    with pytest.raises(PoolExhausted, match=r"4 blocks \(1.0 MiB\)") as refused:
        session.extend(1)
    assert isinstance(refused.value, ResourceExhausted)
    assert session.length == 8 + 1 and allocator.used == 4  # (the caller truncates a failed pass back)


def hold_speculate(stub, prompt, max_new):
    """Opens a Speculate session and keeps it open: (call, close)."""
    done = asyncio.Event()

    async def requests():
        yield pb.SpeculateRequest(open=pb.SessionOpen(prompt_token_ids=prompt, max_new_tokens=max_new,
                                                      tokenizer_fingerprint=ScriptedTarget.fingerprint))
        await done.wait()

    return stub.Speculate(requests(), timeout=30), done


async def first_answer(call):
    while (response := await call.read()).HasField("progress"):
        pass
    return response


def test_a_budget_of_n_worst_cases_admits_n_sessions_and_refuses_the_next_naming_the_budget():
    per_session = 16 * BLOCK_SIZE  # prompt + max_new_tokens: 16 blocks, a quarter of a 1 MiB pool
    prompt = prompts(1)[0][:20]
    with scripted_cloud(max_kv_mib=1, prefix_cache_mb=0) as cloud:
        pool = cloud.running.worker.kv.allocator
        assert pool.capacity * BLOCK_SIZE * ScriptedTarget.kv_bytes_per_token == 1 << 20 and pool.capacity == 64

        async def run():
            async with grpc.aio.insecure_channel(cloud.address) as channel:
                stub = pb_grpc.TandemStub(channel)
                held = [hold_speculate(stub, prompt, per_session - len(prompt)) for _ in range(4)]
                for call, _ in held:
                    assert (await first_answer(call)).HasField("started")
                extra, done = hold_speculate(stub, prompt, per_session - len(prompt))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await first_answer(extra)
                done.set()
                call, done = held.pop()  # one leaves: its blocks admit the next
                done.set()
                call.cancel()
                await asyncio.to_thread(wait_for, lambda: len(cloud.running.registry) == 3)
                held.append(hold_speculate(stub, prompt, per_session - len(prompt)))
                admitted = (await first_answer(held[-1][0])).HasField("started")
                for call, done in held:
                    done.set()
                    call.cancel()
                return refused.value, admitted

        error, admitted = asyncio.run(run())
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "not enough KV-cache memory" in error.details() and "KV budget of 1.0 MiB" in error.details()
        assert admitted
        wait_for(lambda: cloud.live_sessions == 0 and cloud.running.registry.reserved_blocks == 0)
        assert pool.used == 0


def test_a_prefix_cache_filling_the_pool_is_evicted_for_a_session_never_an_out_of_memory():
    """Finished chats leave their histories in a prefix cache larger than the pool, until it holds
    most blocks; then one session that needs the whole pool runs to its end, exactly."""
    rng = np.random.default_rng(4)
    with scripted_cloud(max_kv_mib=1, prefix_cache_mb=64) as cloud:
        pool, cache = cloud.running.worker.kv.allocator, cloud.running.service.prefix_cache

        async def run():
            async with grpc.aio.insecure_channel(cloud.address) as channel:
                stub = pb_grpc.TandemStub(channel)
                # Each chat leaves its history (8 blocks) and its prompt's snapshot (a 9th: the block the
                # session copied on write): 6 chats hold 54 of the pool's 64 blocks.
                for _ in range(6):
                    prompt = [int(t) for t in rng.integers(1, 63, 100)]
                    assert await generate(stub, prompt, 20, GREEDY) == continuation(prompt, 20, GREEDY)
                await asyncio.to_thread(wait_for, lambda: cloud.live_sessions == 0)
                filled, evicted = pool.used, cache.evictions
                prompt = [int(t) for t in rng.integers(1, 63, 30)]
                max_new = pool.capacity * BLOCK_SIZE - len(prompt)  # its worst case is the whole pool
                return filled, evicted, prompt, max_new, await generate(stub, prompt, max_new, GREEDY, stop_ids=[])

        filled, evicted, prompt, max_new, answer = asyncio.run(run())
        assert filled >= 48 and evicted == 0 and pool.capacity == 64  # the cache held most of the pool, and nothing had asked for it
        assert answer == continuation(prompt, max_new, GREEDY)
        assert cache.evictions > 0 and len(answer) == max_new  # it gave its blocks back; the session had all it needed
