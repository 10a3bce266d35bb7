"""The seam for target engines: everything the cloud knows of the model that verifies drafts.

A new target (a CUDA one, vLLM or SGLang behind it, another library's) is one module
implementing TargetEngine (as cloud/model.py does for transformers) plus its tests; the
scheduler (cloud/scheduler.py), the sessions, the service and the server use only what is
declared here and in cloud/blocks.py. tests/test_engine_protocols.py runs an engine written
in the test file through the real scheduler and gRPC service.

The KV cache is split in two: the bookkeeping (cloud/blocks.py: a fixed number of blocks,
reference counts, each sequence's block table) is shared by every engine; the storage (the
tensors the blocks' keys and values live in) is the engine's, made once by new_kv_storage
and handed back to forward_batch. One forward pass serves many sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cloud.blocks import BLOCK_SIZE, BlockAllocator, BlockTable, KVPool, pool_blocks
from common import sampling
from common.special_tokens import SpecialTokens


@dataclass
class Segment:
    """One session's share of a forward pass: tokens appended to its table, logits kept."""

    table: BlockTable
    token_ids: Sequence[int]
    keep: int  # logits of the last `keep` tokens come back (0: none, e.g. a prefill chunk)

    def __post_init__(self):
        assert self.token_ids and 0 <= self.keep <= len(self.token_ids), (len(self.token_ids), self.keep)


class Logits(Protocol):
    """One segment's logits, [keep, vocab] float32, wherever the engine left them."""

    def argmax(self) -> list[int]:
        """Each row's greedy id (the first of tied maxima). Greedy verification needs only these,
        so an engine on a GPU sends only them to the host."""

    def numpy(self) -> np.ndarray:
        """The rows on the host ([keep, vocab] float32), for sampling."""


def kept_first_row(logits: Logits) -> Logits:
    """Row 0 of `logits` as Logits of its own, to keep past the pass (a prefix-cache snapshot).

    An engine may offer a cheaper row of its own (first_row()): cloud/model.py's ScreenedLogits
    keeps the hidden state and makes the vocabulary's logits only if they are ever asked for.
    Otherwise the row is copied to the host, read-only.
    """
    own = getattr(logits, "first_row", None)
    if own is not None:
        return own()
    row = np.array(logits.numpy()[:1], dtype=np.float32)
    row.setflags(write=False)
    return HostLogits(row)


class HostLogits:
    """Logits already in host memory ([rows, vocab] float32): a prefix-cache snapshot's, or a
    host engine's."""

    def __init__(self, rows: np.ndarray):
        assert rows.ndim == 2, rows.shape
        self.rows = rows

    def argmax(self) -> list[int]:
        return [sampling.greedy(row) for row in self.rows]

    def numpy(self) -> np.ndarray:
        return self.rows


class TargetEngine(Protocol):
    name: str
    device: Any  # where it runs (shown in the ready line), e.g. torch.device("cpu")
    vocab_size: int
    max_context: int  # the model's own context window, in tokens
    eos_token_ids: list[int]  # every id that ends a generation (EOS and end-of-turn tokens)
    fingerprint: str  # the tokenizer's (common/fingerprint.py: vocabulary, BOS/EOS rules): drafts must match it
    chat_template: str  # the template chat prompts are rendered with (the tokenizer's or a built-in one)
    special: SpecialTokens  # the BOS/EOS rules of the tokenizer's default encoding
    kv_bytes_per_token: int  # what one cached position costs (the KV pool is sized with it)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens parsed, nothing added."""

    def encode(self, text: str) -> list[int]:
        """A raw prompt as the tokenizer encodes it by default (BOS/EOS per `special`)."""

    def token_bytes(self, token_id: int) -> bytes:
        """The token's text bytes; special tokens render as nothing (as on the edge)."""

    def new_kv_storage(self, num_blocks: int, block_size: int) -> Any:
        """Room for the keys and values of num_blocks × block_size positions, allocated now
        (the pool never grows). Only forward_batch looks inside."""

    def forward_batch(self, pool: KVPool, segments: Sequence[Segment]) -> list[Logits]:
        """One forward pass over every segment's tokens, each appended to its own KV cache.

        For each segment: `copies = segment.table.extend(len(token_ids))` makes room (copy the
        (from, to) blocks it returns in pool.storage before writing), the keys and values of
        the new tokens go to `table.slots(start, table.length)`, and attention reads
        `table.slots(0, table.length)`. Returns, per segment, the logits of its last `keep`
        tokens. On failure every table is as before (truncate to its old length).
        """

    def free_memory_bytes(self) -> int:
        """Memory still free where the model runs (the default KV budget is half)."""

    def warmup(self) -> None:
        """One small forward pass, so the first request does not pay lazy initialization."""

    # Optional: def tokenizer_files(self) -> dict[str, bytes], the tokenizer as the files the edge
    # reads (tokenizer.json and common.text_tokenizer.SPEC_FILE), served by GetTokenizer
    # (cloud/tokenizer_files.py) to edges whose draft has another vocabulary. Without it that RPC
    # answers FAILED_PRECONDITION and such edges need the target's files locally.


def default_kv_budget_bytes(engine: TargetEngine) -> int:
    """The KV budget when none is configured: half the memory free where the model runs."""
    return engine.free_memory_bytes() // 2


def new_kv_pool(engine: TargetEngine, budget_bytes: int, block_size: int = BLOCK_SIZE) -> KVPool:
    """A KV pool of as many blocks as `budget_bytes` holds, its storage allocated up front."""
    blocks = pool_blocks(budget_bytes, engine.kv_bytes_per_token, block_size)
    allocator = BlockAllocator(blocks, block_size, block_size * engine.kv_bytes_per_token)
    return KVPool(allocator, engine.new_kv_storage(blocks, block_size))
