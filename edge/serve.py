"""`tandem serve`: a local OpenAI-compatible HTTP endpoint over the hybrid runtime.

Desktop chat apps and editor plugins that already speak the OpenAI API to a local server
point their base URL at http://127.0.0.1:8000/v1 and get the cloud model's answers, drafted
locally; while the cloud is unreachable they get the local model's answers, marked degraded.

Built on aiohttp: asyncio-native, so HTTP handlers, the engine and the grpc.aio channel share
one event loop; mature streaming responses (Server-Sent Events are plain chunked writes); and
handler cancellation, which turns a client hanging up into a cancelled generation whose cloud
stream is closed at once. Requests queue on the engine's lock (one generation drives the draft
model at a time), which suits one person's desktop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # aiohttp (~0.15 s) is imported where a server starts, not by `tandem --help`
    from aiohttp import web

from common import settings
from common.checks import check_port_free, check_range
from common.errors import TandemError
from common.extras import require_extra
from common.settings import setting
from edge.config import EdgeConfig
from edge.engine import Generation
from edge.openai_api import ApiError, ResponseBuilder, check_chat_template, parse_chat, parse_completion, progress
from edge.provenance import runs
from edge.sdk import AsyncTandemClient, Delta, completion_of

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"  # the chat page: static files, no build step
# The page runs only its own scripts and styles: model output can never become code.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_BODY_BYTES = 16 * 1024 * 1024
# A TandemError's gRPC code, as the HTTP status and OpenAI error type it becomes here.
_HTTP_ERRORS = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "UNAVAILABLE": (503, "service_unavailable"),
}


HTTP = "HTTP endpoint"


@dataclass
class ServeConfig:
    # Loopback: other machines can't reach a desktop endpoint by default.
    host: str = setting("127.0.0.1", "interface to bind (default %(default)s: this machine only)",
                        env="SERVE_HOST", group=HTTP)
    port: int = setting(8000, "port; 0 picks a free one (default %(default)s)", env="SERVE_PORT", group=HTTP)
    # Requests may name any model.
    model_name: str = setting("tandem", "model id listed by /v1/models (default %(default)s)", group=HTTP)
    default_max_tokens: int = setting(512, "answer length when a request sets neither max_tokens nor "
                                           "max_completion_tokens (default %(default)s)", group=HTTP)
    # Required of every request (the chat page and the API) when set.
    api_key: str | None = setting(None, "require this key of the chat page and the API (Authorization: Bearer "
                                        "KEY; in a browser, open /?key=KEY once); for use with a --host other "
                                        "than loopback", env="API_KEY", metavar="KEY", group=HTTP)
    # What a client that sets no `offline` in its request gets while the cloud is away (edge/offline.py).
    offline: str = setting("degrade", "while the cloud is away mid-answer: degrade (stream the local model's text "
                                      "and mark the answer degraded) or hold (write it provisionally, stream it "
                                      "only once the returning cloud verified it, or at the end of an answer "
                                      "that finished offline: nothing streamed is ever retracted). A request may "
                                      "set \"offline\": \"rewind\" (the chat page does): provisional text is "
                                      "streamed and retracted by `rewind` events (default %(default)s)",
                           env="OFFLINE", choices=("degrade", "hold"), group=HTTP)

    @property
    def page_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        settings.add_arguments(parser, ServeConfig)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeConfig:
        config = settings.from_args(cls, args)
        check_range(config.default_max_tokens, "--default-max-tokens", 1)
        return config


@dataclass
class RequestCounts:
    active: int = 0
    completed: int = 0
    cancelled: int = 0  # the client went away mid-answer
    failed: int = 0
    degraded: int = 0  # completed with (part of) the answer from the local model alone


class OpenAIServer:
    def __init__(self, tandem: AsyncTandemClient, config: ServeConfig | None = None):
        self.tandem = tandem
        self.config = config or ServeConfig()
        self.counts = RequestCounts()
        from edge.http_guard import HttpGuard  # aiohttp: the edge extra
        from edge.metrics import EdgeMetrics  # prometheus_client: the edge extra

        self.metrics = EdgeMetrics()
        self.started_at = int(time.time())
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.guard = HttpGuard(self.config.host, self.config.api_key)

    def app(self) -> web.Application:
        from aiohttp import web
        app = web.Application(middlewares=[self.guard.middleware, web.middleware(_errors_as_json)],
                              client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/", self.page)
        app.router.add_static("/ui/", WEB_DIR)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/tandem/verify", self.verify_answer)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model}", self.model)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    async def start(self) -> int:
        """Binds and serves; returns the port. A client that hangs up cancels its handler."""
        from aiohttp import web
        self.runner = web.AppRunner(self.app(), handler_cancellation=True, shutdown_timeout=2.0,
                                    access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, self.config.port)
        await site.start()
        self.port = self.guard.port = self.runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def page(self, request: web.Request) -> web.FileResponse:
        """The chat page (edge/web/): streams from /v1/chat/completions like any other client."""
        from aiohttp import web
        return web.FileResponse(WEB_DIR / "index.html", headers={
            "Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})

    async def models(self, request: web.Request) -> web.Response:
        from aiohttp import web
        return web.json_response({"object": "list", "data": [self._model_card()]})

    async def model(self, request: web.Request) -> web.Response:
        from aiohttp import web
        if request.match_info["model"] != self.config.model_name:
            raise ApiError(404, f"no model {request.match_info['model']!r}; this server serves "
                                f"{self.config.model_name!r}", "model", code="model_not_found")
        return web.json_response(self._model_card())

    def _model_card(self) -> dict:
        engine = self.tandem.engine
        return {"id": self.config.model_name, "object": "model", "created": self.started_at, "owned_by": "tandem",
                "draft_model": engine.drafter.name,
                "cloud_model": engine.cloud_info.model_name if engine.cloud_info else None}

    async def health(self, request: web.Request) -> web.Response:
        """200 while the endpoint can answer, which it can while the cloud is down (degraded)."""
        from aiohttp import web
        engine = self.tandem.engine
        return web.json_response({
            "status": "ok", "model": self.config.model_name, "mode": self.tandem.mode.value,
            "draft_model": engine.drafter.name, "fallback": engine.fallback.enabled,
            "cloud": self.tandem.cloud_status, "requests": asdict(self.counts),
        })

    async def metrics_page(self, request: web.Request) -> web.Response:
        """Prometheus metrics (edge/metrics.py)."""
        from aiohttp import web
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": self.metrics.content_type})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        parsed = parse_chat(body, self.config.default_max_tokens)
        prompt_ids = await self._encode_chat(parsed)
        # Tool calls are parsed from text as it streams: offline "rewind" (which retracts streamed text)
        # is then "hold" (only verified text is streamed).
        parsing = parsed.tools is not None and parsed.tools.parses
        return await self._answer(request, self._builder(True, parsed.params, prompt_ids, parsed.tools),
                                  self._offline(body, parsed.params.stream and not parsing))

    async def _encode_chat(self, parsed) -> list[int]:
        """The prompt of a chat request, in the target's template (with its tools, if any)."""
        check_chat_template(parsed, self.tandem.engine.chat_template)
        tools = parsed.tools.rendered if parsed.tools else None
        return await asyncio.to_thread(self.tandem.encode_chat, parsed.messages, tools)

    async def verify_answer(self, request: web.Request) -> web.Response:
        """Checks an answer written while the cloud was away (the `tandem.unverified_from` of its last
        chunk), with the request that produced it plus its `answer_token_ids`: 503 while the cloud is
        still away, else {state: "verified exact" | "differs from position N", ...} and the cloud
        model's answer (edge/offline.py)."""
        from aiohttp import web
        body = await _json_body(request)
        parsed = parse_chat(body, self.config.default_max_tokens)
        answer = body.get("answer_token_ids")
        vocab = self.tandem.engine.drafter.vocab_size
        if not isinstance(answer, list) or not answer or not all(type(t) is int and 0 <= t < vocab for t in answer):
            raise ApiError(400, "`answer_token_ids` must be the answer's token ids (as its chunks' token_ids gave "
                                "them)", "answer_token_ids")
        prompt_ids = await self._encode_chat(parsed)
        check = await self.tandem.verify(prompt_ids, answer, **parsed.params.generate_options())
        return web.json_response({"state": check.state, "exact": check.exact, "differs_at": check.differs_at,
                                  "differs_at_char": check.differs_at_char, "token_ids": check.token_ids,
                                  "text": check.text, "stats": check.stats})

    def _offline(self, body: object, stream: bool) -> str:
        """The request's `offline` extension, else --offline; "rewind" only where a stream can carry it."""
        offline = body.get("offline", self.config.offline) if isinstance(body, dict) else self.config.offline
        if offline not in ("degrade", "hold", "rewind"):
            raise ApiError(400, "`offline` must be \"degrade\", \"hold\" or \"rewind\"", "offline")
        return "hold" if offline == "rewind" and not stream else offline  # a whole response has nothing to retract

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        parsed = parse_completion(body, self.config.default_max_tokens)
        if isinstance(parsed.prompt, str):
            prompt_ids = await asyncio.to_thread(self.tandem.encode, parsed.prompt)
        else:
            vocab = self.tandem.engine.drafter.vocab_size
            if max(parsed.prompt) >= vocab:
                raise ApiError(400, f"`prompt` has token id {max(parsed.prompt)} outside the vocabulary "
                                    f"[0, {vocab})", "prompt")
            prompt_ids = list(parsed.prompt)
        return await self._answer(request, self._builder(False, parsed.params, prompt_ids),
                                  self._offline(body, parsed.params.stream))

    def _builder(self, chat: bool, params, prompt_ids: list[int], tools=None) -> ResponseBuilder:
        return ResponseBuilder(chat, self.config.model_name, params, prompt_ids, self.tandem.engine.drafter.token_bytes,
                               tools)

    async def _answer(self, request: web.Request, builder: ResponseBuilder, offline: str = "degrade"
                      ) -> web.StreamResponse:
        """One response of `n` independent choices, each its own generation (seeded per choice)."""
        n = builder.params.n
        builders = [builder] + [builder.for_choice(i) for i in range(1, n)]
        generations = [Generation(self.tandem.mode) for _ in range(n)]
        self.counts.active += 1
        try:
            async with contextlib.AsyncExitStack() as stack:
                deltas = [await stack.enter_async_context(contextlib.aclosing(self.tandem.deltas(
                    builder.prompt_token_ids, generation, **builder.params.generate_options(i), offline=offline)))
                    for i, generation in enumerate(generations)]
                if builder.params.stream:
                    response, finished = await self._stream(request, builders, deltas, generations)
                else:
                    response, finished = await self._collect(builder, deltas, generations), True
        except (asyncio.CancelledError, ConnectionResetError):  # the client went away
            self.counts.cancelled += 1
            for generation in generations:
                self.metrics.answered(generation, "cancelled")
            log.info("client went away: generation cancelled after %d tokens",
                     sum(len(g.token_ids) for g in generations))
            raise
        except BaseException:
            self.counts.failed += 1
            for generation in generations:
                self.metrics.answered(generation, "failed")
            raise
        finally:
            self.counts.active -= 1
        if finished:
            self.counts.completed += 1
            self.counts.degraded += any(g.degraded for g in generations)
        else:
            self.counts.failed += 1
        for generation in generations:
            self.metrics.answered(generation, "completed" if finished else "failed")
        return response

    async def _collect(self, builder: ResponseBuilder, deltas: list[AsyncIterator[Delta]],
                       generations: list[Generation]) -> web.Response:
        from aiohttp import web

        async def text_of(choice: AsyncIterator[Delta]) -> str:
            return "".join([delta.text async for delta in choice])

        texts = await asyncio.gather(*(text_of(d) for d in deltas))
        completions = [completion_of(text, g) for text, g in zip(texts, generations)]
        return web.json_response(builder.responses(completions), headers=_fallback_headers(*generations))

    async def _stream(self, request: web.Request, builders: list[ResponseBuilder], deltas: list[AsyncIterator[Delta]],
                      generations: list[Generation]) -> tuple[web.StreamResponse, bool]:
        """The answer as Server-Sent Events, the choices' chunks interleaved as they come; False if
        it broke off with an error event."""
        from aiohttp import web
        events: asyncio.Queue = asyncio.Queue()
        # Each choice drives its own generation (with one draft slot they take turns); its last
        # event is its _ChoiceEnd.
        choices = [asyncio.create_task(self._choice_events(i, b, d, g, events))
                   for i, (b, d, g) in enumerate(zip(builders, deltas, generations))]
        completions: dict = {}
        ended: set[int] = set()  # choices whose _ChoiceEnd arrived: their tasks are finishing on their own

        async def next_chunk() -> dict | None:
            """The next chunk of any choice; None once all ended. A choice's error is raised."""
            while len(completions) < len(choices):
                event = await events.get()
                if not isinstance(event, _ChoiceEnd):
                    return event
                ended.add(event.index)
                if event.error is not None:
                    raise event.error
                completions[event.index] = event.completion
            return None

        try:
            # The first chunk comes before the headers, so a request the cloud refuses gets a plain
            # HTTP error, and the degraded header tells whether the answer started locally.
            chunk = await next_chunk()
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                   **_fallback_headers(*generations)})
            await response.prepare(request)
            finished = True
            try:
                while chunk is not None:
                    await _send_event(response, chunk)
                    chunk = await next_chunk()
                if builders[0].params.include_usage:
                    await _send_event(response, builders[0].usage_chunk([completions[i] for i in range(len(choices))]))
            except TandemError as exc:  # headers are gone: the error travels as an event, as OpenAI's does
                log.warning("generation failed mid-stream: %s", exc)
                await _send_event(response, _api_error(exc).body())
                finished = False
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        finally:
            live = [task for i, task in enumerate(choices) if i not in ended]
            for task in live:
                task.cancel()
            if live:
                await asyncio.gather(*live, return_exceptions=True)  # before their generations are closed
        return response, finished

    async def _choice_events(self, index: int, builder: ResponseBuilder, deltas: AsyncIterator[Delta],
                             generation: Generation, events: asyncio.Queue) -> None:
        """One choice's chunks into `events`, then its _ChoiceEnd (its Completion, or its error)."""
        text, unsent_ids, unsent_sources = [], [], []
        sent = 0  # tokens already sent: the next chunk's first token is token_ids[sent]

        def logprobs_of(ids: list[int]) -> list:
            return [generation.logprobs.get(sent + i) for i in range(len(ids))]

        try:
            delta = await anext(deltas, None)
            while delta is not None:
                if delta.rewind_to is not None or delta.verified_to is not None:
                    if delta.rewind_to is not None:  # the text and ids from there on are replaced
                        text = _cut("".join(text), delta.rewind_text_to)
                        keep = max(0, delta.rewind_to - sent)
                        unsent_ids, unsent_sources = unsent_ids[:keep], unsent_sources[:keep]
                        sent = min(sent, delta.rewind_to)
                    events.put_nowait(builder.extension_chunk(delta.degraded, **_offline_event(delta)))
                    delta = await anext(deltas, None)
                    continue
                unsent_ids += delta.token_ids
                unsent_sources += [delta.source] * len(delta.token_ids)
                if delta.text:
                    text.append(delta.text)
                    chunk = builder.chunk(delta.text, unsent_ids, delta.degraded, runs(unsent_sources),
                                          progress(generation.stats.as_dict()), logprobs_of(unsent_ids))
                    if chunk is not None:  # None: text held back (it may be part of a tool call)
                        events.put_nowait(chunk)
                        sent += len(unsent_ids)
                        unsent_ids, unsent_sources = [], []
                delta = await anext(deltas, None)
            completion = completion_of("".join(text), generation)
            events.put_nowait(builder.final_chunk(completion, unsent_ids, runs(unsent_sources), logprobs_of(unsent_ids)))
            events.put_nowait(_ChoiceEnd(index, completion))
        except Exception as exc:  # noqa: BLE001 - delivered to the response, which raises or reports it
            events.put_nowait(_ChoiceEnd(index, error=exc))


def _cut(text: str, length: int) -> list[str]:
    return [text[:length]] if length else []


def _offline_event(delta: Delta) -> dict:
    """The `rewind` or `verified` extension of a chunk (offline "rewind", edge/offline.py): a client
    cuts its text to `to_char` characters (its ids to `to_token`) and appends what follows."""
    if delta.rewind_to is not None:
        return {"rewind": {"to_token": delta.rewind_to, "to_char": delta.rewind_text_to}}
    return {"verified": {"to_token": delta.verified_to, "source": delta.source.value}}


@dataclass
class _ChoiceEnd:
    """The last event of one choice of a streamed answer."""

    index: int
    completion: object = None  # its edge.sdk.Completion
    error: Exception | None = None


def _fallback_headers(*generations: Generation) -> dict[str, str]:
    return {"X-Tandem-Degraded": "true" if any(g.degraded for g in generations) else "false",
            "X-Tandem-Answered-By": ",".join(dict.fromkeys(g.answered_by for g in generations))}


async def _send_event(response: web.StreamResponse, payload: dict) -> None:
    await response.write(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")


async def _json_body(request: web.Request) -> object:
    try:
        return await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def _api_error(exc: TandemError) -> ApiError:
    status, kind = _HTTP_ERRORS.get(exc.code, (502, "api_error"))
    return ApiError(status, str(exc), kind=kind, code=getattr(exc, "api_code", exc.code.lower()))


async def _errors_as_json(request: web.Request, handler) -> web.StreamResponse:
    """Every error answers in OpenAI's shape: {"error": {message, type, param, code}}."""
    from aiohttp import web
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except TandemError as exc:
        error = _api_error(exc)
        return web.json_response(error.body(), status=error.status)
    except web.HTTPException as exc:  # unknown path, wrong method, body too large
        if exc.status < 400:
            raise
        return web.json_response(ApiError(exc.status, exc.reason).body(), status=exc.status,
                                 headers={k: v for k, v in exc.headers.items() if k == "Allow"})


# -- the command ----------------------------------------------------------------------------

def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="a local OpenAI-compatible HTTP endpoint (for desktop apps and editor plugins)",
        description="Serve the OpenAI chat and completions APIs on this machine: POST /v1/chat/completions, "
                    "POST /v1/completions (streaming as Server-Sent Events, or not), GET /v1/models, "
                    "GET /health, and a chat page at / that shows which tokens the local model drafted and the "
                    "cloud accepted. Answers are the cloud model's, drafted locally; while the cloud is "
                    "unreachable the local model answers and responses are marked degraded.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--mode", choices=["hybrid", "cloud", "edge"], default="hybrid",
                        help="hybrid: local drafts, cloud verifies; edge: the local model only")
    ServeConfig.add_arguments(parser)
    EdgeConfig.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    require_extra("edge", "tandem serve")
    config, edge = ServeConfig.from_args(args), EdgeConfig.from_args(args).validate()
    check_port_free(config.host, config.port)  # before the models load, not after
    asyncio.run(_serve(config, edge, args.mode))
    return 0


async def _serve(config: ServeConfig, edge: EdgeConfig, mode: str) -> None:
    async with AsyncTandemClient(config=edge, mode=mode) as tandem:
        server = OpenAIServer(tandem, config)
        port = await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        cloud = tandem.cloud_status
        print(f"tandem serve ready: http://{config.host}:{port}/v1 model={config.model_name} "
              f"mode={mode} cloud={cloud.get('state')} {cloud.get('address', '')}".rstrip(), flush=True)
        page = dataclasses.replace(config, port=port).page_url
        print(f"chat page: {page}" + ("?key=<your --api-key>" if config.api_key else ""), flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()
