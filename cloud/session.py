"""One speculative session on the cloud: a KV cache, the committed tokens, and verification.

State: `tokens` holds every committed token (prompt, then generated). The KV cache holds
all of them but the last, the *pending* token: the next forward pass feeds the pending
token followed by the drafts, so one pass yields the target's distribution at every drafted
position plus the one after them.

All methods block (they run the model); the service calls them off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cloud.limits import SessionLimits
from cloud.prefix_cache import PrefixCache
from cloud.target_engine import TargetEngine
from common import sampling
from common.errors import FailedPrecondition, InvalidArgument
from common.stop import TokenStopScanner
from common.wire import (
    DraftBlock,
    DraftMode,
    FinishReason,
    SamplingParams,
    SessionOpen,
    SessionStarted,
    Verdict,
)


class TokenChooser:
    """The target's decision rule at one position, shared by Speculate and Generate."""

    def __init__(self, params: SamplingParams):
        self.params = params

    def probs(self, logits: np.ndarray) -> np.ndarray:
        p = self.params
        return sampling.logits_to_probs(logits, p.temperature, p.top_k, p.top_p)

    def choose(self, logits: np.ndarray, position: int) -> int:
        """The target's own token at `position` from its logits there ([vocab])."""
        if self.params.greedy:
            return sampling.greedy(logits)
        return sampling.sample_keyed(self.probs(logits), self.params.seed, sampling.STREAM_TARGET, position)


class VerifierSession:
    def __init__(self, model: TargetEngine, request: SessionOpen, limits: SessionLimits, prefix_cache: PrefixCache | None = None):
        self.model = model
        self.request = request
        self.limits = limits
        self.prefix_cache = prefix_cache
        self.chooser = TokenChooser(request.sampling)
        self.stop_ids = set(model.eos_token_ids) | set(request.stop_token_ids)
        self.stop_text: TokenStopScanner | None = None
        self.tokens: list[int] = []
        self.generated = 0
        self.forward_passes = 0
        self.finished = FinishReason.NONE
        self.cache = None
        self._shared_prefix = False  # the cache state came from the prefix cache
        self.max_context = limits.context_for(model.max_context)
        self._validate_open()

    @property
    def kv_tokens(self) -> int:
        return self.model.cache_length(self.cache) if self.cache is not None else 0

    @property
    def max_kv_tokens(self) -> int:
        """The most tokens this session's KV cache can ever hold (verification included)."""
        r = self.request
        return min(len(r.prompt_token_ids) + r.max_new_tokens, self.max_context)

    def _validate_open(self) -> None:
        r, lim, model = self.request, self.limits, self.model
        if r.tokenizer_fingerprint != model.fingerprint:
            raise FailedPrecondition(
                f"tokenizer mismatch: draft model {r.draft_model_name or '(unnamed)'!r} has tokenizer "
                f"fingerprint {r.tokenizer_fingerprint or '(none)'!r}, target model {model.name!r} has "
                f"{model.fingerprint!r}; their token ids mean different things. Use a draft model "
                "of the target's tokenizer family."
            )
        if not r.prompt_token_ids:
            raise InvalidArgument("prompt_token_ids is empty")
        if len(r.prompt_token_ids) > lim.max_prompt_tokens:
            raise InvalidArgument(
                f"prompt has {len(r.prompt_token_ids)} tokens; this server accepts at most {lim.max_prompt_tokens}"
            )
        if not 1 <= r.max_new_tokens <= lim.max_new_tokens:
            raise InvalidArgument(f"max_new_tokens must be in [1, {lim.max_new_tokens}], got {r.max_new_tokens}")
        if len(r.resume_token_ids) >= r.max_new_tokens:
            raise InvalidArgument("resume_token_ids already reach max_new_tokens")
        context = len(r.prompt_token_ids) + len(r.resume_token_ids)
        if context >= self.max_context:
            raise InvalidArgument(
                f"prompt of {context} tokens leaves no room in this server's context of {self.max_context}"
            )
        if len(r.stop_token_ids) > lim.max_stop_tokens:
            raise InvalidArgument(
                f"{len(r.stop_token_ids)} stop_token_ids; this server accepts at most {lim.max_stop_tokens}"
            )
        self._check_ids(r.prompt_token_ids, "prompt_token_ids")
        self._check_ids(r.resume_token_ids, "resume_token_ids")
        self._check_ids(r.stop_token_ids, "stop_token_ids")
        s = r.sampling
        if not (np.isfinite(s.temperature) and s.temperature >= 0 and np.isfinite(s.top_p)):
            raise InvalidArgument("temperature must be a finite number >= 0, top_p finite")
        if len(r.stop_strings) > lim.max_stop_strings:
            raise InvalidArgument(f"{len(r.stop_strings)} stop strings; at most {lim.max_stop_strings} allowed")
        for stop in r.stop_strings:
            if not 1 <= len(stop.encode()) <= lim.max_stop_string_bytes:
                raise InvalidArgument(
                    f"stop string {stop[:40]!r} must have 1 to {lim.max_stop_string_bytes} bytes of UTF-8"
                )

    def _check_ids(self, ids: Sequence[int], what: str) -> None:
        bad = [t for t in ids if not 0 <= t < self.model.vocab_size]
        if bad:
            raise InvalidArgument(f"{what} has token id {bad[0]} outside the vocabulary [0, {self.model.vocab_size})")

    def start(self) -> SessionStarted:
        """Prefills prompt (+ resumed tokens) and chooses the first new token."""
        r = self.request
        self.tokens = list(r.prompt_token_ids) + list(r.resume_token_ids)
        self.generated = len(r.resume_token_ids)
        if r.stop_strings:
            self.stop_text = TokenStopScanner(r.stop_strings, self.model.token_bytes)
            for token in r.resume_token_ids:
                self.stop_text.push(token)
        logits = self._prefill()
        position = len(self.tokens)
        first = self.chooser.choose(logits[0], position)
        accepted = self._commit([first])
        token = accepted[0] if accepted else None
        return SessionStarted(position, token, self.finished, self.forward_passes)

    def verify(self, block: DraftBlock) -> Verdict:
        """Verifies one draft block; see the DraftBlock and Verdict docs in the proto."""
        if self.cache is None:
            raise FailedPrecondition("a draft block arrived before the session was opened")
        if len(block.token_ids) > self.limits.max_draft_tokens:
            raise InvalidArgument(
                f"draft block has {len(block.token_ids)} tokens; at most {self.limits.max_draft_tokens} allowed"
            )
        self._check_ids(block.token_ids, "draft token_ids")
        sparse = self.request.draft_mode == DraftMode.SPARSE_Q and not self.chooser.params.greedy
        if sparse:
            self._check_dists(block)

        overlap = len(self.tokens) - block.start_position
        if self.finished or not 1 <= overlap <= len(block.token_ids) or block.token_ids[:overlap] != self.tokens[block.start_position:]:
            # Pipelined blocks drafted before a rejection or the finish was known: not an error.
            return Verdict(block.start_position, 0, None, self.finished, stale=True,
                           forward_passes=self.forward_passes)
        drafts = block.token_ids[overlap:]
        budget = self.request.max_new_tokens - self.generated
        room = self.max_context - len(self.tokens)
        drafts = drafts[: max(0, min(budget, room) - 1)]
        dists = block.draft_dists[overlap - 1 : overlap - 1 + len(drafts)] if sparse else []

        first_position = len(self.tokens)
        if drafts:
            logits = self._forward([self.tokens[-1], *drafts], keep=len(drafts) + 1)
            self._shared_prefix = False
        else:
            logits = self._decode_step()
        if sparse:
            accepted, next_token = self._rejection_sample(logits, drafts, dists, first_position)
        else:
            accepted, next_token = self._match_targets(logits, drafts, first_position)
        self.model.crop(self.cache, len(self.tokens) + accepted)
        committed = self._commit([*drafts[:accepted], next_token])
        reached = min(len(committed), accepted)
        next_out = committed[accepted] if len(committed) > accepted else None
        return Verdict(block.start_position, reached, next_out, self.finished, forward_passes=self.forward_passes)

    def _match_targets(self, logits: np.ndarray, drafts: list[int], first_position: int) -> tuple[int, int]:
        """Greedy, or ids-only sampling (common.sampling.match_targets); logits: [k + 1, vocab]."""
        return sampling.match_targets(drafts, lambda i: self.chooser.choose(logits[i], first_position + i))

    def _rejection_sample(self, logits, drafts, dists, first_position) -> tuple[int, int]:
        vocab = logits.shape[-1]
        p = self.chooser.probs(logits)  # [k + 1, vocab]
        q = np.stack([sampling.dense_from_quantized(np.array(d.token_ids), np.array(d.weights), vocab) for d in dists]) \
            if dists else np.zeros((0, vocab))
        seed = self.chooser.params.seed
        uniforms = np.array(
            [sampling.keyed_uniform(seed, sampling.STREAM_ACCEPT, first_position + i, np.array([x]))[0]
             for i, x in enumerate(drafts)]
        )

        def draw(dist: np.ndarray, i: int) -> int:
            stream = sampling.STREAM_TARGET if i == len(drafts) else sampling.STREAM_RESIDUAL
            return sampling.sample_keyed(dist, seed, stream, first_position + i)

        return sampling.rejection_sample(p, q, np.array(drafts, dtype=np.int64), uniforms, draw)

    def _check_dists(self, block: DraftBlock) -> None:
        if len(block.draft_dists) != max(0, len(block.token_ids) - 1):
            raise InvalidArgument("sparse-q mode needs one draft distribution per token after the anchor")
        for i, (x, d) in enumerate(zip(block.token_ids[1:], block.draft_dists)):
            if not 1 <= len(d.token_ids) == len(d.weights) <= self.limits.max_draft_top_k:
                raise InvalidArgument(f"draft distribution {i} must have 1..{self.limits.max_draft_top_k} entries")
            self._check_ids(d.token_ids, "draft distribution token_ids")
            if sum(d.weights) != sampling.Q_SCALE or len(set(d.token_ids)) != len(d.token_ids):
                raise InvalidArgument(f"draft distribution {i} must have distinct ids and weights summing to 65536")
            if x not in d.token_ids or d.weights[d.token_ids.index(x)] == 0:
                raise InvalidArgument(f"draft token {i} has zero probability under its own distribution")

    def _forward(self, token_ids: list[int], keep: int) -> np.ndarray:
        self.forward_passes += 1
        return self.model.forward(self.cache, token_ids, keep)

    def _prefill(self) -> np.ndarray:
        """Logits ([1, vocab]) after the prompt, with the prompt in the KV cache."""
        snapshot = self.prefix_cache.get(self.tokens) if self.prefix_cache is not None else None
        self._shared_prefix = snapshot is not None
        if snapshot is not None:
            self.cache = self.model.copy_cache(snapshot.kv)
            return snapshot.logits[None]
        self.cache = self.model.new_cache()
        logits = self._forward(self.tokens, keep=1)
        self._store_snapshot(logits[0])
        return logits

    def _decode_step(self) -> np.ndarray:
        """One plain decoding step (no drafts): logits ([1, vocab]) after the pending token."""
        if self._shared_prefix:
            snapshot = self.prefix_cache.get(self.tokens)
            if snapshot is not None:
                self.cache = self.model.copy_cache(snapshot.kv)
                return snapshot.logits[None]
        logits = self._forward([self.tokens[-1]], keep=1)
        if self._shared_prefix:
            self._store_snapshot(logits[0])
        self._shared_prefix = False
        return logits

    def _store_snapshot(self, logits: np.ndarray) -> None:
        if self.prefix_cache is not None and self.prefix_cache.would_store(self.tokens, logits.nbytes):
            self.prefix_cache.put(self.tokens, self.model.copy_cache(self.cache), logits)

    def _commit(self, new_tokens: list[int]) -> list[int]:
        """Appends tokens up to the first stop token or limit; returns those appended."""
        committed = []
        for token in new_tokens:
            self.tokens.append(token)
            self.generated += 1
            committed.append(token)
            if token in self.stop_ids or (self.stop_text and self.stop_text.push(token)):
                self.finished = FinishReason.STOP
            elif self.generated >= self.request.max_new_tokens:
                self.finished = FinishReason.LENGTH
            elif len(self.tokens) >= self.max_context:
                self.finished = FinishReason.CONTEXT
            if self.finished:
                break
        return committed

    def close(self) -> None:
        self.cache = None
