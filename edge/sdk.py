"""The Python SDK as a client of a cloud you name: stream text from the hybrid runtime in three lines.

    from edge import TandemClient
    tandem = TandemClient("cloud.example.com:50051")
    for text in tandem.stream("Write a haiku about the sea"): print(text, end="", flush=True)

`tandem.Tandem` (tandem/sdk.py) is the same SDK that also starts a cloud of its own on loopback
when given no address; edge/ cannot import cloud/, so this one never does (and it is the one
the thin client has). AsyncTandemClient is the asyncio flavour (`async for text in tandem.stream(...)`). Options are
GenerateOptions fields, e.g. `tandem.complete(prompt, temperature=0.7, top_p=0.9, seed=7,
stop=["\n\n"])`; `complete_n(prompt, n, ...)` samples n completions; `json_schema={...}` (or
`json_object=True`) constrains the answer to JSON, exactly under the cloud model's distribution.

Offline fallback is on by default: when the cloud can't be reached (or drops mid-answer) the
local model finishes the answer, and `Completion.degraded` / `Delta.degraded` say so. Pass
`fallback=False` for answers that are exactly the cloud model's or an error (CloudUnavailable).

`offline="rewind"` (deltas() only) makes what the local model writes while the cloud is away
*provisional* (Delta.source PROVISIONAL), verified when the cloud returns (edge/offline.py): the
answer then ends exactly as if the cloud had never gone. An app redraws like this: keep the
answer's text; append each Delta's text; on a Delta with `rewind_to` set, cut the text to
`rewind_text_to` characters (and the ids to `rewind_to`) before appending what follows, which
replaces it. A Delta with `verified_to` set says the provisional tokens before that index were the
cloud model's own (repaint them as exact; their text does not change). `offline="hold"` writes
the same way but yields no provisional text until it is verified (or the answer ends offline):
nothing it yields is ever retracted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from common.detok import IncrementalDetokenizer
from common.grammar import json_object_grammar, json_schema_grammar
from common.extras import require_extra
from common.loop_thread import LoopThread
from common.stop import StopScanner
from common.wire import DraftMode, FinishReason, SamplingParams
from edge.config import EdgeConfig
from edge.engine import EdgeEngine, Generation, GenerationRequest, Mode
from edge.offline import Offline, Rewind, Verified
from edge.provenance import Source, totals


@dataclass(frozen=True)
class Completion:
    text: str  # cut before the first stop string
    token_ids: list[int]  # generated tokens, up to the one that completed a stop string
    finish_reason: str | None  # "stop" or "length"
    stats: dict
    seed: int | None = None  # the sampling seed (None when greedy): pass it again to reproduce
    degraded: bool = False  # the local model alone wrote token_ids[fallback_at:]
    answered_by: str = "hybrid"  # "hybrid", "local", "hybrid-then-local", "cloud" or "edge"
    fallback_at: int | None = None
    fallback_reason: str = ""
    provenance: dict[str, int] = dataclasses.field(default_factory=dict)  # tokens per Source value
    # Which cloud replica served which part: [{"from_token": i, "replica": name}], in order. More
    # than one entry when the answer resumed on another replica (stats["resumes"] counts them).
    served_by: list[dict] = dataclasses.field(default_factory=list)
    # offline="rewind"/"hold": token_ids[unverified_from:] were written while the cloud was away and the
    # answer ended before it returned; check them later with AsyncTandemClient.verify.
    unverified_from: int | None = None
    # When asked for (GenerateOptions.logprobs): token_ids[i]'s log-probabilities (common.wire.TokenLogprob).
    logprobs: list | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of an answer: new text, the token ids it came from, and who produced them.

    Text and ids need not line up one to one: a character split across tokens is released
    with the token that completes it, and text that may begin a stop string is held back.
    """

    text: str
    token_ids: list[int]
    degraded: bool  # produced by the local model alone (offline fallback)
    source: Source | None = None  # who chose token_ids (all alike); None when there are none
    replica: str | None = None  # the cloud replica serving the answer when these tokens arrived
    # offline="rewind": the answer from token rewind_to (character rewind_text_to of its text) on is
    # retracted, this Delta's text and ids replace it; verified_to: provisional tokens before it are exact.
    rewind_to: int | None = None
    rewind_text_to: int | None = None
    verified_to: int | None = None


@dataclass(frozen=True)
class AnswerCheck:
    """An answer the local model finished while the cloud was away, checked once it is back."""

    exact: bool  # every token is the one the cloud model would have chosen
    differs_at: int | None  # else: the first token index where it would not have
    differs_at_char: int | None  # and the character of the answer's text where that token began
    token_ids: list[int]  # the cloud model's answer (the checked one when exact)
    text: str
    stats: dict

    @property
    def state(self) -> str:
        return "verified exact" if self.exact else f"differs from position {self.differs_at}"


@dataclass(frozen=True)
class GenerateOptions:
    """Sampling: temperature 0 is greedy; otherwise the output follows the cloud model's
    distribution after temperature, top-k and top-p exactly, and a seed fixes it."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1 disables
    seed: int | None = None  # None: a random seed per generation
    stop: str | Sequence[str] = ()  # stop strings: the text ends before the first one
    stop_token_ids: tuple[int, ...] = ()
    draft_mode: str = "ids"  # "ids" (token ids only on the wire) or "sparse" (drafts carry top-k q)
    chat: bool = False  # wrap the prompt in the model's chat template as a user message
    offline: str = "degrade"  # while the cloud is away: "degrade", "rewind" or "hold" (edge/offline.py)
    # Structured output (common/grammar.py), applied to the cloud model's distribution exactly:
    json_schema: dict | None = None  # the answer is JSON text valid under this JSON Schema
    json_object: bool = False  # JSON mode: the answer is a JSON object
    grammar: str = ""  # or any llguidance grammar (llguidance's docs/syntax.md)
    # Log-probabilities of the cloud model's distribution as served, from its verification pass:
    # None for none; N for each token's and the N most likely (Completion.logprobs, Generation.logprobs).
    logprobs: int | None = None
    # Penalties and biases (common.sampling.penalize), applied to the cloud model's logits exactly:
    frequency_penalty: float = 0.0  # OpenAI's: minus this times the token's count in the answer so far
    presence_penalty: float = 0.0  # OpenAI's: minus this once for a token the answer contains
    repetition_penalty: float = 1.0  # transformers': a token of the prompt or answer, its logit / this (or *)
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def grammar_text(self) -> str:
        """The llguidance grammar these options ask for ("" for none); InvalidArgument names a
        schema the grammar engine rejects."""
        if self.grammar:
            return self.grammar
        if self.json_schema is not None:
            return json_schema_grammar(self.json_schema, "json_schema")
        return json_object_grammar() if self.json_object else ""


class AsyncTandemClient:
    def __init__(self, cloud: str | None = None, *, draft_model: str | None = None, mode: str = "hybrid",
                 fallback: bool | None = None, config: EdgeConfig | None = None):
        """fallback: answer locally while the cloud is unreachable (default on; see EdgeConfig)."""
        self.config = config or EdgeConfig(cloud=cloud, draft_model=draft_model)
        if fallback is not None:
            self.config = dataclasses.replace(
                self.config, fallback=dataclasses.replace(self.config.fallback, enabled=fallback))
        self.mode = Mode(mode)
        self._engine_cm = None
        self.engine: EdgeEngine | None = None

    @classmethod
    def from_engine(cls, engine: EdgeEngine, mode: str = "hybrid") -> AsyncTandemClient:
        """Wraps an engine the caller built and owns (close() leaves it open)."""
        tandem = cls(mode=mode)
        tandem.engine = engine
        return tandem

    async def start(self) -> AsyncTandemClient:
        if self.engine is None:
            from edge.open_engine import open_engine

            self._engine_cm = open_engine(self.config, self.mode)
            self.engine = await self._engine_cm.__aenter__()
        return self

    async def close(self) -> None:
        if self._engine_cm is not None:
            cm, self._engine_cm, self.engine = self._engine_cm, None, None
            await cm.__aexit__(None, None, None)

    async def __aenter__(self) -> AsyncTandemClient:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        if chat:
            return self.encode_chat([{"role": "user", "content": prompt}])
        return self.engine.encode(prompt)

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of `messages` ([{role, content}]) in the target's chat template, ready for a reply;
        `tools`: OpenAI tool objects for a template that renders them (edge/tool_calls.py)."""
        return self.engine.encode_chat(messages, tools)

    def _render(self, prompt: str) -> str:
        """A user message in the cloud model's chat template (no local model to take it from).

        The template's BOS is left out (bos_token ""): the cloud encodes prompt_text with its
        default rules, which add the one BOS the model wants.
        """
        require_extra("edge", "a chat prompt without a local model", ("jinja2",))
        from edge.chat_template import render_chat

        info = self.engine.cloud_info
        return render_chat(info.chat_template, [{"role": "user", "content": prompt}],
                           eos_token=info.special_tokens.eos_token)

    async def deltas(self, prompt_token_ids: list[int], generation: Generation | None = None, **options
                     ) -> AsyncIterator[Delta]:
        """Yields the answer to a tokenized prompt as Deltas; options are GenerateOptions fields.

        Pass `generation` to read token ids, finish reason, stats and fallback state after. With
        stop strings, its token_ids end with the token that completed the stop string.
        """
        generation = generation or Generation(self.mode)
        deltas = self._deltas(dict(prompt_token_ids=list(prompt_token_ids)), generation, options)
        if options.get("offline") == Offline.HOLD.value:
            deltas = held(deltas, generation)
        async with contextlib.aclosing(deltas) as deltas:
            async for delta in deltas:
                yield delta

    async def verify(self, prompt_token_ids: list[int], answer_token_ids: list[int], **options) -> AnswerCheck:
        """Checks an answer written offline (Completion.degraded) against the cloud model, as a history
        prefix: verified exact, or where it differs and the cloud model's answer from there on. Pass
        the answer's options again (sampled: its seed, Completion.seed). CloudUnavailable while it is away.
        Stop strings are not applied: the answer's ids already end where it stopped."""
        generation = Generation(Mode.HYBRID)
        text, differs_at_char = "", None
        async with contextlib.aclosing(self._deltas(dict(prompt_token_ids=list(prompt_token_ids)), generation,
                                                    {**options, "offline": Offline.REWIND.value, "stop": ()},
                                                    check_ids=list(answer_token_ids))) as deltas:
            async for delta in deltas:
                if delta.rewind_to is not None and differs_at_char is None:
                    differs_at_char = delta.rewind_text_to
                text = text[:delta.rewind_text_to] if delta.rewind_to is not None else text + delta.text
        exact = not generation.rewinds
        return AnswerCheck(exact, None if exact else generation.rewinds[0], differs_at_char,
                           list(generation.token_ids), text, generation.stats.as_dict())

    async def _deltas(self, prompt: dict, generation: Generation | None, options: dict,
                      check_ids: list[int] | None = None) -> AsyncIterator[Delta]:
        """deltas() for a tokenized prompt, or (no local model: the thin client) for prompt_text,
        with the text rendered by the cloud."""
        await self.start()
        opts = GenerateOptions(**options)
        if opts.draft_mode not in ("ids", "sparse"):
            raise ValueError(f"draft_mode must be 'ids' or 'sparse', not {opts.draft_mode!r}")
        if opts.seed is not None and not 0 <= opts.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2^64), got {opts.seed}")
        offline = Offline(opts.offline)
        cloud_text = self.engine.drafter is None
        request = GenerationRequest(
            **prompt,
            return_text=cloud_text,
            max_new_tokens=opts.max_tokens,
            sampling=SamplingParams(opts.temperature, opts.top_k, opts.top_p, opts.seed,
                                    opts.frequency_penalty, opts.presence_penalty, opts.repetition_penalty,
                                    tuple(sorted((opts.logit_bias or {}).items()))),
            stop_token_ids=list(opts.stop_token_ids),
            draft_mode=DraftMode.SPARSE_Q if opts.draft_mode == "sparse" else DraftMode.TOKEN_IDS,
            stop_strings=opts.stop_strings,
            verify_offline=offline.verifies,
            check_ids=list(check_ids or []),
            grammar=opts.grammar_text(),
            logprobs=opts.logprobs,
        )
        generation = generation or Generation(self.mode)
        detok = None if cloud_text else IncrementalDetokenizer(self.engine.drafter.token_bytes)
        stops = StopScanner(opts.stop_strings)
        last = None
        rendered = 0  # of generation.text (cloud_text)
        async with contextlib.aclosing(self.engine.generate(request, self.mode, generation)) as tokens:
            async for new in tokens:
                if isinstance(new, Verified):
                    yield Delta("", [], generation.degraded, new.source, generation.replica,
                                verified_to=new.start + new.count)
                    continue
                if isinstance(new, Rewind):
                    # The text shown for the ids kept, through fresh detokenizer and stop scanner
                    # that then go on from there: an incremental decoding's text only ever grows.
                    detok, stops = IncrementalDetokenizer(self.engine.drafter.token_bytes), StopScanner(opts.stop_strings)
                    kept = stops.push(detok.push(generation.token_ids))
                    yield Delta("", [], generation.degraded, replica=generation.replica, rewind_to=new.position,
                                rewind_text_to=len(kept))
                    continue
                source = generation.sources[-1]  # the engine yields tokens chosen alike
                ids, text = [], ""
                if cloud_text:  # the cloud stops at a stop string itself: `new` is one token
                    ids, text = list(new), stops.push(generation.text[rendered:])
                    rendered = len(generation.text)
                for token in new if detok else ():
                    ids.append(token)
                    text += stops.push(detok.push([token]))
                    if stops.hit is not None:
                        break
                if stops.hit is not None:
                    # Tokens after the one that completed the stop string are not part of the answer.
                    del generation.token_ids[len(generation.token_ids) - len(new) + len(ids):]
                    del generation.sources[len(generation.token_ids):]
                    last = Delta(text, ids, generation.degraded, source, generation.replica)
                    break  # leaving the block closes the generation (and its cloud stream) now
                yield Delta(text, ids, generation.degraded, source, generation.replica)
        if last is None:
            rest = generation.text[rendered:] if cloud_text else detok.flush()
            last = Delta(stops.push(rest) + stops.flush(), [], generation.degraded, replica=generation.replica)
        if stops.hit is not None:
            generation.finish_reason = FinishReason.STOP
        if last.text or last.token_ids:
            yield last

    async def stream(self, prompt: str, generation: Generation | None = None, **options) -> AsyncIterator[str]:
        """Yields text deltas; options are GenerateOptions fields. Pass `generation` to read stats after."""
        await self.start()
        options = dict(options)
        if options.get("offline") == Offline.REWIND.value:
            raise ValueError('stream() yields text only and cannot retract it: use deltas() for offline="rewind", '
                             'or offline="hold"')
        chat = options.pop("chat", False)
        if self.engine.drafter is None:  # the cloud tokenizes (and renders the answer)
            prompt_fields = dict(prompt_token_ids=[], prompt_text=self._render(prompt) if chat else prompt)
        else:
            prompt_fields = dict(prompt_token_ids=await asyncio.to_thread(self.encode, prompt, chat))
        generation = generation or Generation(self.mode)
        deltas = self._deltas(prompt_fields, generation, options)
        if options.get("offline") == Offline.HOLD.value:
            deltas = held(deltas, generation)
        async with contextlib.aclosing(deltas) as deltas:
            async for delta in deltas:
                if delta.text:
                    yield delta.text

    async def complete(self, prompt: str, **options) -> Completion:
        """The whole answer; with offline="rewind" it is the text after every rewind."""
        generation = Generation(self.mode)
        if options.get("offline") != Offline.REWIND.value:
            text = "".join([delta async for delta in self.stream(prompt, generation, **options)])
            return completion_of(text, generation)
        options = dict(options)
        ids = await asyncio.to_thread(self.encode, prompt, options.pop("chat", False))
        text = ""
        async for delta in self.deltas(ids, generation, **options):
            text = text[:delta.rewind_text_to] if delta.rewind_to is not None else text + delta.text
        return completion_of(text, generation)

    async def complete_n(self, prompt: str, n: int, **options) -> list[Completion]:
        """n completions of one prompt, one after another over one connection and one draft model.

        With a seed, completion i uses seed + i, so each one can be reproduced alone.
        """
        seed = options.pop("seed", None)
        return [await self.complete(prompt, seed=None if seed is None else seed + i, **options) for i in range(n)]

    @property
    def cloud_status(self) -> dict:
        """The cloud's state ("up", "down", "unknown"), last error and reconnect count."""
        if self.engine is None or self.engine.client is None:
            return {"state": "none"}
        return {"address": self.engine.client.address, **self.engine.cloud.as_dict()}


async def held(deltas: AsyncIterator[Delta], generation: Generation) -> AsyncIterator[Delta]:
    """offline="hold": the rewinding deltas with provisional text held back until verified.

    Text is released only while no token is provisional (generation.provisional_from is None) and
    at the end, so a rewind always falls within text not yet released.
    """
    text, ids, shown_text, shown_ids = "", [], 0, 0
    last = None
    async for delta in deltas:
        if delta.rewind_to is not None:
            text, ids = text[:delta.rewind_text_to], ids[:delta.rewind_to]
            assert len(text) >= shown_text and len(ids) >= shown_ids, "a rewind into text already shown"
            continue
        text, ids, last = text + delta.text, ids + delta.token_ids, delta
        if generation.provisional_from is None and (len(text) > shown_text or len(ids) > shown_ids):
            yield dataclasses.replace(delta, text=text[shown_text:], token_ids=ids[shown_ids:], verified_to=None)
            shown_text, shown_ids = len(text), len(ids)
    if last is not None and (len(text) > shown_text or len(ids) > shown_ids):  # ended offline: provisional
        yield dataclasses.replace(last, text=text[shown_text:], token_ids=ids[shown_ids:], degraded=generation.degraded,
                                  verified_to=None)


def completion_of(text: str, generation: Generation) -> Completion:
    return Completion(text, generation.token_ids, generation.finish_reason.label, generation.stats.as_dict(),
                      generation.seed, generation.degraded, generation.answered_by, generation.fallback_at,
                      generation.fallback_reason, totals(generation.sources), served_by_of(generation),
                      generation.provisional_from,
                      [generation.logprobs.get(i) for i in range(len(generation.token_ids))]
                      if generation.logprobs else None)


def served_by_of(generation: Generation) -> list[dict]:
    return [{"from_token": start, "replica": replica} for start, replica in generation.served_by]


class TandemClient:
    """Synchronous SDK: runs an AsyncTandemClient on a private event loop thread."""

    def __init__(self, cloud: str | None = None, **kwargs):
        self._async = AsyncTandemClient(cloud, **kwargs)
        self._loop = LoopThread("tandem-sdk").start()

    def _run(self, coroutine):
        return self._loop.run(coroutine)

    def stream(self, prompt: str, **options) -> Iterator[str]:
        agen = self._async.stream(prompt, **options)
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def complete(self, prompt: str, **options) -> Completion:
        return self._run(self._async.complete(prompt, **options))

    def complete_n(self, prompt: str, n: int, **options) -> list[Completion]:
        return self._run(self._async.complete_n(prompt, n, **options))

    def close(self) -> None:
        if self._loop.alive:
            self._run(self._async.close())
            self._loop.stop()

    def __enter__(self) -> TandemClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
