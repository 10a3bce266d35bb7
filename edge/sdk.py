"""The Python SDK: stream text from the hybrid runtime in three lines.

    from edge import Tandem
    tandem = Tandem("cloud.example.com:50051")      # or Tandem() for an embedded local cloud
    for text in tandem.stream("Write a haiku about the sea"): print(text, end="", flush=True)

AsyncTandem is the asyncio flavour (`async for text in tandem.stream(...)`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from common.detok import IncrementalDetokenizer
from common.types import DraftMode, SamplingParams
from edge.config import EdgeConfig
from edge.engine import Generation, GenerationRequest, Mode


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" or "length"
    stats: dict


@dataclass(frozen=True)
class GenerateOptions:
    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    draft_mode: str = "ids"  # "ids" or "sparse"
    chat: bool = False  # wrap the prompt in the model's chat template as a user message


class AsyncTandem:
    def __init__(self, cloud: str | None = None, *, draft_model: str | None = None, mode: str = "hybrid",
                 config: EdgeConfig | None = None):
        self.config = config or EdgeConfig(cloud=cloud, draft_model=draft_model)
        self.mode = Mode(mode)
        self._engine_cm = None
        self.engine = None

    async def start(self) -> AsyncTandem:
        if self.engine is None:
            from edge.runtime import open_engine

            self._engine_cm = open_engine(self.config, self.mode)
            self.engine = await self._engine_cm.__aenter__()
        return self

    async def close(self) -> None:
        if self._engine_cm is not None:
            cm, self._engine_cm, self.engine = self._engine_cm, None, None
            await cm.__aexit__(None, None, None)

    async def __aenter__(self) -> AsyncTandem:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        from edge.chat_template import render_chat

        drafter = self.engine.drafter
        if chat:
            prompt = render_chat(drafter.chat_template, [{"role": "user", "content": prompt}])
        return drafter.tokenize(prompt)

    async def stream(self, prompt: str, generation: Generation | None = None, **options) -> AsyncIterator[str]:
        """Yields text deltas; options are GenerateOptions fields. Pass `generation` to read stats after."""
        await self.start()
        opts = GenerateOptions(**options)
        request = GenerationRequest(
            prompt_token_ids=self.encode(prompt, opts.chat),
            max_new_tokens=opts.max_tokens,
            sampling=SamplingParams(opts.temperature, opts.top_k, opts.top_p, opts.seed or 0),
            stop_token_ids=list(opts.stop_token_ids),
            draft_mode=DraftMode.SPARSE_Q if opts.draft_mode == "sparse" else DraftMode.TOKEN_IDS,
        )
        generation = generation or Generation(self.mode)
        detok = IncrementalDetokenizer(self.engine.drafter.token_bytes)
        async for new in self.engine.generate(request, self.mode, generation):
            text = detok.push(new)
            if text:
                yield text
        tail = detok.flush()
        if tail:
            yield tail

    async def complete(self, prompt: str, **options) -> Completion:
        generation = Generation(self.mode)
        text = "".join([delta async for delta in self.stream(prompt, generation, **options)])
        return Completion(text, generation.token_ids, generation.finish_reason.label, generation.stats.as_dict())


class Tandem:
    """Synchronous SDK: runs an AsyncTandem on a private event loop thread."""

    def __init__(self, cloud: str | None = None, **kwargs):
        self._async = AsyncTandem(cloud, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tandem-sdk", daemon=True)
        self._thread.start()

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

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

    def close(self) -> None:
        if self._thread.is_alive():
            self._run(self._async.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> Tandem:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
