"""The TargetEngine seam is real: an engine written here plugs into the real scheduler and gRPC service.

ScriptedTarget is a second target engine, in numpy: its logits at a position are a keyed
random function of the whole token history before it, so its own greedy and sampled
continuations are known here without the cloud (`continuation`). Its KV "cache" stores each
position's token id in the pool's slots, and its logits are computed from the ids read back
through the block table: a wrong block table, a missed copy on write or a stale slot changes
the history it sees, and so its output. Nothing in cloud/ was changed to run it.
"""

from __future__ import annotations

import asyncio
import random

import grpc
import numpy as np
import pytest
from test_limits import wait_for

from cloud.blocks import KVPool
from cloud.target_engine import HostLogits, Segment
from common import sampling
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from common.special_tokens import SpecialTokens
from common.wire import SamplingParams
from edge.draft_engine import DraftEngine

_HASH_MOD = (1 << 61) - 1


class ScriptedTarget:
    """A TargetEngine whose logits are a keyed function of the token history (numpy only)."""

    name = "scripted"
    device = "cpu"
    vocab_size = 64
    max_context = 2048
    eos_token_ids = [63]
    fingerprint = "scripted-64"
    chat_template = ""
    special = SpecialTokens()
    kv_bytes_per_token = 1024  # pretend: 1 MiB of budget holds 1024 positions, 64 blocks

    def __init__(self):
        self.batch_sizes: list[int] = []  # segments in each forward pass

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) % 62 + 1 for c in text]

    def encode(self, text: str) -> list[int]:
        return self.tokenize(text)

    def token_bytes(self, token_id: int) -> bytes:
        return b"" if token_id in (0, 63) else bytes([32 + token_id])

    def new_kv_storage(self, num_blocks: int, block_size: int) -> np.ndarray:
        return np.full(num_blocks * block_size, -1, dtype=np.int64)  # -1: never written

    def forward_batch(self, pool: KVPool, segments: list[Segment]) -> list[HostLogits]:
        self.batch_sizes.append(len(segments))
        slots_per_block = pool.allocator.block_size
        out = []
        for segment in segments:
            table, n = segment.table, len(segment.token_ids)
            start = table.length
            for old, new in table.extend(n):
                pool.storage[new * slots_per_block:(new + 1) * slots_per_block] = \
                    pool.storage[old * slots_per_block:(old + 1) * slots_per_block]
            pool.storage[table.slots(start, start + n)] = segment.token_ids
            history = pool.storage[table.slots(0, start + n)]
            assert (history >= 0).all(), "read a slot nothing wrote"
            rows = [logits_after(history[: p + 1]) for p in range(start + n - segment.keep, start + n)]
            out.append(HostLogits(np.stack(rows) if rows else np.zeros((0, self.vocab_size), np.float32)))
        return out

    def free_memory_bytes(self) -> int:
        return 1 << 30

    def warmup(self) -> None:
        pass


def logits_after(history) -> np.ndarray:
    """ScriptedTarget's logits after `history` ([vocab] float32); EOS (63) all but never comes, so an
    answer runs to the length a test asks for."""
    key = 0
    for token in history:
        key = (key * 1_000_003 + int(token) + 1) % _HASH_MOD
    logits = np.random.default_rng(key).standard_normal(ScriptedTarget.vocab_size).astype(np.float32) * 2.5
    logits[63] -= 10.0
    return logits


def continuation(prompt, max_new, params: SamplingParams, stop_ids=()) -> list[int]:
    """The scripted target's own output: greedy, or its keyed sample at each position (as the cloud's
    Generate defines it), up to max_new tokens or a stop token."""
    tokens, out = list(prompt), []
    while len(out) < max_new:
        logits = logits_after(tokens)
        if params.greedy:
            token = sampling.greedy(logits)
        else:
            probs = sampling.logits_to_probs(logits, params.temperature, params.top_k, params.top_p)
            token = sampling.sample_keyed(probs, params.seed, sampling.STREAM_TARGET, len(tokens))
        out.append(token)
        tokens.append(token)
        if token in ScriptedTarget.eos_token_ids or token in stop_ids:
            break
    return out


GREEDY = SamplingParams(temperature=0.0, seed=0)


def sampled(seed: int) -> SamplingParams:
    return SamplingParams(temperature=0.75, top_k=0, top_p=0.875, seed=seed)  # exact in float32, as on the wire


def scripted_cloud(**config):
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    config.setdefault("max_kv_mib", 4)
    return EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, **config), model=ScriptedTarget())


async def generate(stub, prompt, max_new, params: SamplingParams, stop_ids=()) -> list[int]:
    request = pb.GenerateRequest(prompt_token_ids=prompt, max_new_tokens=max_new, sampling=params.to_pb(),
                                 stop_token_ids=list(stop_ids))
    tokens = []
    async for response in stub.Generate(request, timeout=60):
        if response.HasField("token_id"):
            tokens.append(response.token_id)
    return tokens


async def speculate(stub, prompt, max_new, params: SamplingParams, reference, key) -> list[int]:
    """Drafts `reference` corrupted at keyed positions (~30%), in blocks of 0 to 6 drafts."""
    requests: asyncio.Queue = asyncio.Queue()

    async def outgoing():
        while (request := await requests.get()) is not None:
            yield request

    await requests.put(pb.SpeculateRequest(open=pb.SessionOpen(
        prompt_token_ids=prompt, max_new_tokens=max_new, sampling=params.to_pb(),
        tokenizer_fingerprint=ScriptedTarget.fingerprint)))
    call = stub.Speculate(outgoing(), timeout=60)
    tokens, drafts, finished = [], [], False
    try:
        async for response in call:
            kind = response.WhichOneof("kind")
            if kind == "progress":
                continue
            if kind == "started":
                tokens.append(response.started.token_id)
                finished = response.started.finish_reason
            else:
                verdict = response.verdict
                assert kind == "verdict" and not verdict.stale, response
                tokens += drafts[: verdict.accepted_count]
                tokens += [verdict.next_token] if verdict.HasField("next_token") else []
                finished = verdict.finish_reason
            if finished:
                break
            rng = random.Random(f"{key}:{len(tokens)}")
            drafts = [reference[i] if rng.random() > 0.3 else (reference[i] + 1 + rng.randrange(40)) % 63
                      for i in range(len(tokens), min(len(tokens) + rng.randint(0, 6), len(reference)))]
            await requests.put(pb.SpeculateRequest(draft=pb.DraftBlock(
                start_position=len(prompt) + len(tokens) - 1, token_ids=[tokens[-1], *drafts])))
    finally:
        await requests.put(None)
        call.cancel()
    return tokens


def prompts(count, seed=7):
    rng = random.Random(seed)
    return [[rng.randrange(1, 63) for _ in range(rng.randrange(2, 70))] for _ in range(count)]


@pytest.mark.parametrize("params", [GREEDY, sampled(0)], ids=["greedy", "sampled"])
def test_a_scripted_engine_serves_exactly_its_own_output_through_the_real_scheduler_and_service(params):
    """Eight sessions at once, Generate and Speculate, with rejections at many positions: each
    answer is the scripted target's own continuation, and the passes really were shared."""
    cases = [(prompt, 20 + 3 * i, params if params.greedy else sampled(100 + i))
             for i, prompt in enumerate(prompts(8))]
    references = [continuation(p, n, s) for p, n, s in cases]
    assert len({tuple(r) for r in references}) == len(references)

    with scripted_cloud(max_batch_tokens=48) as cloud:
        async def run():
            async with grpc.aio.insecure_channel(cloud.address) as channel:
                stub = pb_grpc.TandemStub(channel)
                calls = [generate(stub, p, n, s) if i % 2 else speculate(stub, p, n, s, ref, key=i)
                         for i, ((p, n, s), ref) in enumerate(zip(cases, references))]
                return await asyncio.gather(*calls)

        results = asyncio.run(run())
        wait_for(lambda: cloud.live_sessions == 0)  # every session was freed
        batch_sizes = cloud.model.batch_sizes
    assert results == references
    assert max(batch_sizes) >= 4, batch_sizes  # several sessions per forward pass


def test_a_stop_token_ends_a_scripted_session_where_the_target_does():
    prompt = prompts(1, seed=3)[0]
    free = continuation(prompt, 60, GREEDY)
    stop = free[10]
    expected = continuation(prompt, 60, GREEDY, stop_ids={stop})
    assert expected[-1] == stop and len(expected) <= 11

    with scripted_cloud() as cloud:
        async def run():
            async with grpc.aio.insecure_channel(cloud.address) as channel:
                return await generate(pb_grpc.TandemStub(channel), prompt, 60, GREEDY, stop_ids=[stop])

        assert asyncio.run(run()) == expected


def test_an_engine_without_tokenizer_files_answers_get_tokenizer_with_failed_precondition():
    """tokenizer_files is optional: an engine without it still serves sessions, and an edge that
    asks for its tokenizer hears why it cannot have it."""
    with scripted_cloud() as cloud:
        async def run():
            async with grpc.aio.insecure_channel(cloud.address) as channel:
                call = pb_grpc.TandemStub(channel).GetTokenizer(pb.TokenizerRequest())
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call.read()
                return failed.value

        error = asyncio.run(run())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "--target-tokenizer" in error.details()


def test_llama_drafter_is_a_draft_engine(tiny_drafter):
    assert isinstance(tiny_drafter("exact"), DraftEngine)
