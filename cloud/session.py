"""One speculative session on the cloud: a KV cache, the committed tokens, and verification.

State: `tokens` holds every committed token (prompt, then generated). The KV cache holds
all of them but the last, the *pending* token: the next forward pass feeds the pending
token followed by the drafts, so one pass yields the target's distribution at every drafted
position plus the one after them.

The session never runs the model itself: each method either answers at once (a stale block,
a prefix-cache hit) or returns the Work it needs from the next forward pass, whose `finish`
turns that pass's logits into the answer. The scheduler (cloud/scheduler.py) batches the Work
of all sessions and calls every method on its model thread, so a session is never touched by
two threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cloud.blocks import KVPool
from cloud.decode_hints import HintBuffer
from cloud.limits import SessionLimits
from cloud.prefix_cache import PrefixCache
from cloud.target_engine import Logits, TargetEngine, kept_first_row
from common import sampling
from common.grammar import GrammarMask, llg_tokenizer
from common.errors import FailedPrecondition, InvalidArgument
from common.stop import TokenStopScanner
from common.wire import (
    CloudDecode,
    DraftBlock,
    DraftMode,
    FinishReason,
    SamplingParams,
    SessionOpen,
    SessionStarted,
    TokenLogprob,
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

    def choose_first(self, logits, position: int) -> int:
        """The target's token from the first row of `logits` (cloud.target_engine.Logits).
        Greedy: only the argmax id leaves the device."""
        if self.params.greedy:
            return logits.argmax()[0]
        return self.choose(logits.numpy()[0], position)


@dataclass
class Work:
    """What a session needs from the next forward pass.

    token_ids are appended to the session's KV cache; `finish` receives the logits of the last
    `keep` of them (cloud.target_engine.Logits, [keep, vocab]) and returns the session's answer (None while a prefill is
    only partly done).
    """

    session: VerifierSession
    token_ids: list[int]
    keep: int
    finish: Callable[[Logits], object]
    drafted: int = 0  # draft tokens verified by this pass (for the spec-decode metrics)


class VerifierSession:
    def __init__(self, model: TargetEngine, request: SessionOpen, limits: SessionLimits, prefix_cache: PrefixCache | None = None,
                 kv: KVPool | None = None):
        self.model = model
        self.kv = kv  # the KV pool (cloud/blocks.py) this session's blocks live in
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
        self.table = None  # cloud.blocks.BlockTable of the KV cache; None until begin() / after close()
        self.prefilled = 0  # prompt tokens already in the KV cache while a chunked prefill runs
        self.reused_tokens = 0  # prompt tokens whose KV came from a cached prefix (not prefilled)
        self._shared_prefix = False  # the cache state came from the prefix cache
        self.decode_until = 0  # CloudDecode: the cloud decodes alone while len(tokens) is below this
        self.hints = HintBuffer(limits.max_hint_tokens)  # the edge's guesses while it does (DecodeHint)
        self.max_context = limits.context_for(model.max_context)
        self._validate_open()
        self.grammar = self._grammar(request.grammar) if request.grammar else None
        if self.grammar is not None and not self.grammar.sync(request.resume_token_ids):
            raise InvalidArgument("resume_token_ids leave the grammar")

    @property
    def kv_tokens(self) -> int:
        return self.table.length if self.table is not None else 0

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
        self.check_ids(r.prompt_token_ids, "prompt_token_ids")
        self.check_ids(r.resume_token_ids, "resume_token_ids")
        self.check_ids(r.stop_token_ids, "stop_token_ids")
        self._check_penalties(r.sampling)
        if r.logprobs is not None and not 0 <= r.logprobs <= sampling.MAX_TOP_LOGPROBS:
            raise InvalidArgument(f"logprobs must be in [0, {sampling.MAX_TOP_LOGPROBS}], got {r.logprobs}")
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

    def _grammar(self, grammar: str) -> GrammarMask:
        """The structured-output constraint (common/grammar.py) over this session's answer."""
        text = getattr(self.model, "text", None)  # the target's common.text_tokenizer.TextTokenizer
        if text is None:
            raise FailedPrecondition(f"target engine {self.model.name!r} has no tokenizer for grammars")
        return GrammarMask(grammar, llg_tokenizer(text, self.model.vocab_size), self.model.vocab_size)

    @property
    def _adjusts(self) -> bool:
        """Whether the served distribution differs from the model's logits (then every choice
        goes through _served_row, on the host)."""
        return self.grammar is not None or self.chooser.params.penalizes

    def _served_row(self, row: np.ndarray, drafts_before: Sequence[int]) -> np.ndarray | None:
        """The target's logits ([vocab]) at the position after the committed tokens and
        `drafts_before`, as served there: penalties and biases as a function of the tokens before
        it (common.sampling.penalize), then the grammar's mask in that state. None when those
        drafts leave the grammar (such a position is never reached: the invalid draft has
        probability zero)."""
        prompt = self.request.prompt_token_ids
        generated = [*self.tokens[len(prompt):], *drafts_before]
        params = self.chooser.params
        if params.penalizes:
            row = params.penalize(row, prompt, generated)
        if self.grammar is None:
            return row
        return self.grammar.masked_after(generated, row)

    def _logprobs(self, logits, committed: Sequence[int]) -> list[TokenLogprob]:
        """Log-probabilities of `committed` (the tokens about to be committed; logits: the pass's
        cloud.target_engine.Logits, [>= len(committed), vocab], at their positions), when the
        session asked for them: from the verification pass itself. Called before the tokens join
        self.tokens, so row j's state is the committed tokens plus committed[:j]."""
        if self.request.logprobs is None:
            return []
        rows = logits.numpy()
        temperature = self.chooser.params.temperature
        out = []
        for j, token in enumerate(committed):
            out.append(TokenLogprob.of(self._served_row(rows[j], committed[:j]), token, self.request.logprobs,
                                       temperature))
            if token in self.stop_ids:
                break  # nothing after a stop token is committed (nor inside the grammar)
        return out

    def _check_penalties(self, s: SamplingParams) -> None:
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(s, name) <= 2:
                raise InvalidArgument(f"{name} must be in [-2, 2], got {getattr(s, name)}")
        if not (np.isfinite(s.repetition_penalty) and 0 < s.repetition_penalty <= 100):
            raise InvalidArgument(f"repetition_penalty must be in (0, 100], got {s.repetition_penalty}")
        if len(s.logit_bias) > self.limits.max_logit_bias:
            raise InvalidArgument(f"{len(s.logit_bias)} logit_bias entries; at most {self.limits.max_logit_bias}")
        self.check_ids([t for t, _ in s.logit_bias], "logit_bias")
        if not all(-100 <= b <= 100 for _, b in s.logit_bias):
            raise InvalidArgument("logit_bias values must be in [-100, 100]")

    def check_ids(self, ids: Sequence[int], what: str) -> None:
        bad = [t for t in ids if not 0 <= t < self.model.vocab_size]
        if bad:
            raise InvalidArgument(f"{what} has token id {bad[0]} outside the vocabulary [0, {self.model.vocab_size})")

    def begin(self) -> SessionStarted | None:
        """Takes the prompt (+ resumed tokens); answers at once from the prefix cache, else None.

        After None, prefill_work() feeds the prompt through the model chunk by chunk.
        """
        r = self.request
        self.tokens = list(r.prompt_token_ids) + list(r.resume_token_ids)
        self.generated = len(r.resume_token_ids)
        if r.stop_strings:
            self.stop_text = TokenStopScanner(r.stop_strings, self.model.token_bytes)
            for token in r.resume_token_ids:
                self.stop_text.push(token)
        snapshot = self.prefix_cache.get(self.tokens) if self.prefix_cache is not None else None
        self._shared_prefix = snapshot is not None
        if snapshot is not None:
            self.table = snapshot.kv.fork()
            self.prefilled = len(self.tokens)
            return self._started(snapshot.logits)
        self.table = self._reuse_prefix() or self.kv.new_table()
        return None

    def _reuse_prefix(self):
        """A fork of the cached KV sharing the longest prefix with self.tokens, cut to that prefix.

        It keeps at most all tokens but the last, so the prefill feeds at least one token and
        its logits come out. None when nothing cached shares a prefix.
        """
        found = self.prefix_cache.longest_prefix(self.tokens) if self.prefix_cache is not None else None
        if found is None:
            return None
        length, entry = found
        length = min(length, len(self.tokens) - 1)
        if length <= 0:
            return None
        table = entry.kv.fork()
        table.truncate(length)  # the first write into its shared last block copies that block
        self.prefilled = self.reused_tokens = length
        self.prefix_cache.reused(length)
        return table

    @property
    def prefill_remaining(self) -> int:
        """Prompt (+ resumed) tokens not yet in the KV cache."""
        return self.prefill_length - self.prefilled

    @property
    def prefill_length(self) -> int:
        r = self.request
        return len(r.prompt_token_ids) + len(r.resume_token_ids)

    def prefill_work(self, budget: int) -> Work:
        """The next chunk of the prompt, at most `budget` tokens; its last chunk yields SessionStarted."""
        chunk = self.tokens[self.prefilled : min(self.prefill_length, self.prefilled + max(1, budget))]
        self.prefilled += len(chunk)
        if self.prefill_remaining:
            return Work(self, chunk, 0, lambda logits: None)
        return Work(self, chunk, 1, self._prefilled)

    def _prefilled(self, logits) -> SessionStarted:
        self._store_snapshot(logits)
        return self._started(logits)

    def _started(self, logits) -> SessionStarted:
        position = len(self.tokens)
        if self._adjusts:
            first = self.chooser.choose(self._served_row(logits.numpy()[0], []), position)
        else:
            first = self.chooser.choose_first(logits, position)
        logprobs = self._logprobs(logits, [first])
        accepted = self._commit([first])
        token = accepted[0] if accepted else None
        return SessionStarted(position, token, self.finished, self.forward_passes,
                              logprob=logprobs[0] if logprobs and accepted else None)

    def plan_verify(self, block: DraftBlock) -> Verdict | Work:
        """Checks one draft block; see the DraftBlock and Verdict docs in the proto.

        Returns the Verdict at once when no forward pass is needed (a stale block, a cached
        step), else the Work whose finish() yields it.
        """
        if self.table is None or self.prefill_remaining:
            raise FailedPrecondition("a draft block arrived before the session was opened")
        if len(block.token_ids) > self.limits.max_draft_tokens:
            raise InvalidArgument(
                f"draft block has {len(block.token_ids)} tokens; at most {self.limits.max_draft_tokens} allowed"
            )
        self.check_ids(block.token_ids, "draft token_ids")
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

        def finish(logits) -> Verdict:
            if not drafts and self._shared_prefix:
                self._store_snapshot(logits)
            self._shared_prefix = False
            return self._judge(block.start_position, logits, drafts, dists, sparse)

        if not drafts and self._shared_prefix:
            snapshot = self.prefix_cache.get(self.tokens)
            if snapshot is not None:
                self.table.release()
                self.table = snapshot.kv.fork()
                self._shared_prefix = False
                return self._judge(block.start_position, snapshot.logits, drafts, dists, sparse)
        return Work(self, [self.tokens[-1], *drafts], len(drafts) + 1, finish, drafted=len(drafts))

    def decode_work(self, hints: int = 0) -> Verdict | Work:
        """One decoding step, for Generate and CloudDecode: a block of the pending token and, with
        CloudDecode, up to `hints` of the edge's guesses that continue the committed tokens
        (cloud/decode_hints.py), never reaching past what the CloudDecode requests ask for."""
        guesses = self.hints.usable(self.tokens)[: max(0, min(hints, self.decode_until - len(self.tokens) - 1))]
        return self.plan_verify(DraftBlock(len(self.tokens) - 1, [self.tokens[-1], *guesses]))

    def usable_hints(self) -> int:
        """How many of the edge's guesses a decoding step could check now (none for a session that
        asked for log-probabilities: a DecodedToken carries those of its own token only)."""
        if self.request.logprobs is not None:
            return 0
        return max(0, min(len(self.hints.usable(self.tokens)), self.decode_until - len(self.tokens) - 1))

    # --- the cloud decoding on its own within a Speculate session (CloudDecode; issue 19) ----

    def extend_decode(self, request: CloudDecode) -> bool:
        """Takes a CloudDecode: True when it continues the committed tokens (or the decoding already
        asked for) and the cloud now decodes up to its end; False when it is stale (see the proto).

        Each token is then decode_work's: the target's own choice at its position, the same token
        a verdict would bring there, so the answer does not depend on which mode produced it.
        """
        if self.table is None or self.prefill_remaining:
            raise FailedPrecondition("a decode request arrived before the session was opened")
        if self.finished or request.start_position != max(len(self.tokens), self.decode_until):
            return False
        self.decode_until = request.end_position
        return True

    def decoding(self) -> bool:
        """Whether CloudDecode requests still ask for tokens."""
        return not self.finished and len(self.tokens) < self.decode_until

    def _judge(self, start_position: int, logits, drafts: list[int], dists, sparse: bool) -> Verdict:
        """The verdict on `drafts` from the target's logits at and after them ([len(drafts) + 1, vocab])."""
        first_position = len(self.tokens)
        if sparse:
            accepted, next_token = self._rejection_sample(logits.numpy(), drafts, dists, first_position)
        else:
            accepted, next_token = self._match_targets(logits, drafts, first_position)
        self.table.truncate(len(self.tokens) + accepted)
        logprobs = self._logprobs(logits, [*drafts[:accepted], next_token])
        committed = self._commit([*drafts[:accepted], next_token])
        reached = min(len(committed), accepted)
        next_out = committed[accepted] if len(committed) > accepted else None
        return Verdict(start_position, reached, next_out, self.finished, forward_passes=self.forward_passes,
                       logprobs=logprobs[: len(committed)])

    def _match_targets(self, logits, drafts: list[int], first_position: int) -> tuple[int, int]:
        """Greedy, or ids-only sampling (common.sampling.match_targets); logits: [k + 1, vocab].

        Greedy: only the argmax ids leave the model's device (Logits.argmax). Under a grammar the
        target's token at draft index i is chosen from row i masked after drafts[:i], which all
        matched (match_targets asks for i only then), so the state is always a valid one.
        """
        if self._adjusts:
            rows = logits.numpy()
            return sampling.match_targets(
                drafts, lambda i: self.chooser.choose(self._served_row(rows[i], drafts[:i]), first_position + i))
        if self.chooser.params.greedy:
            return sampling.match_targets(drafts, logits.argmax().__getitem__)
        rows = logits.numpy()
        return sampling.match_targets(drafts, lambda i: self.chooser.choose(rows[i], first_position + i))

    def _rejection_sample(self, logits, drafts, dists, first_position) -> tuple[int, int]:
        vocab = logits.shape[-1]
        if self._adjusts:
            logits = self._served_rows(logits, drafts)
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

    def _served_rows(self, logits: np.ndarray, drafts: list[int]) -> np.ndarray:
        """Row i ([k + 1, vocab]) as served after drafts[:i] (_served_row). Rows after a
        draft outside the grammar repeat the last valid row: that draft has p = 0, so it is
        rejected and no later row is read."""
        rows = np.empty_like(logits)
        for i in range(len(rows)):
            masked = self._served_row(logits[i], drafts[:i])
            rows[i] = masked if masked is not None else rows[i - 1]
        return rows

    def _check_dists(self, block: DraftBlock) -> None:
        if len(block.draft_dists) != max(0, len(block.token_ids) - 1):
            raise InvalidArgument("sparse-q mode needs one draft distribution per token after the anchor")
        for i, (x, d) in enumerate(zip(block.token_ids[1:], block.draft_dists)):
            if not 1 <= len(d.token_ids) == len(d.weights) <= self.limits.max_draft_top_k:
                raise InvalidArgument(f"draft distribution {i} must have 1..{self.limits.max_draft_top_k} entries")
            self.check_ids(d.token_ids, "draft distribution token_ids")
            if sum(d.weights) != sampling.Q_SCALE or len(set(d.token_ids)) != len(d.token_ids):
                raise InvalidArgument(f"draft distribution {i} must have distinct ids and weights summing to 65536")
            if x not in d.token_ids or d.weights[d.token_ids.index(x)] == 0:
                raise InvalidArgument(f"draft token {i} has zero probability under its own distribution")

    def _store_snapshot(self, logits) -> None:
        """Offers the prefix cache the KV of self.tokens, all of them, and the logits after them.

        Called right after a pass fed the last of self.tokens, before anything is committed. The
        snapshot shares this session's blocks; whoever writes into a shared block copies it first.
        """
        logits_nbytes = 4 * self.model.vocab_size  # what the row holds once made, whatever it holds now
        if self.prefix_cache is not None and self.prefix_cache.would_store(self.tokens, logits_nbytes):
            self.prefix_cache.put(self.tokens, self.table.fork(), kept_first_row(logits), logits_nbytes)

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
        """Frees the KV cache, leaving the sequence it holds to the prefix cache (a chat's next turn)."""
        if self.table is not None:
            self._store_history()
            self.table.release()
            self.table = None

    def _store_history(self) -> None:
        """Offers the prefix cache every token fed so far (prompt and answer) as a prefix entry.

        The KV holds all committed tokens but the pending one, and after a stop token inside an
        accepted draft run possibly drafts past it: only the committed ones are kept.
        """
        length = min(self.table.length, len(self.tokens))
        history = self.tokens[:length]
        if self.prefix_cache is not None and self.prefix_cache.would_store(history, 0):
            kv = self.table.fork()
            kv.truncate(length)
            self.prefix_cache.put(history, kv)

