"""The OpenAI API's wire format: request bodies parsed and checked, responses and chunks built.

Pure translation, no HTTP and no model: edge/serve.py hands it JSON bodies and SDK results.
Field names and shapes follow the OpenAI chat and completions APIs, so the official client
and the desktop apps that speak them work unchanged. Extensions, which OpenAI clients ignore:

- request `top_k` (int, 0 = off) and `return_token_ids` (bool: the prompt's and the answer's
  token ids come back, as `prompt_token_ids` and per choice `token_ids`);
- response and every chunk: `degraded` (bool): the cloud was unreachable, so (part of) the
  answer is the local model's alone (see edge/fallback.py);
- every chunk that carries tokens: `provenance`, who chose them, in order, as runs
  [{"source": "accepted" | "cloud" | "local", "tokens": n}] (see edge/provenance.py), and
  `progress`, the generation so far {tokens, rounds, drafted, accepted, round_trip_ms,
  elapsed_s};
- the response and the last chunk: `tandem` {answered_by, fallback_at, fallback_reason, stats,
  provenance: tokens per source, served_by}; served_by lists which cloud replica served which
  part ([{from_token, replica}]).

Parameters a request may set but this server can't honour are refused with a 400 that says
so, rather than silently ignored. Tools (function calling) are edge/tool_calls.py's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.errors import InvalidArgument
from common.grammar import json_object_grammar, json_schema_grammar
from common.sampling import MAX_TOP_LOGPROBS
from common.stop import MAX_STOP_STRINGS
from common.wire import TokenLogprob
from edge.sdk import Completion
from edge.tool_calls import (
    ToolCall, ToolCallStream, ToolRequest, ToolsError, chat_message, parse_tool_calls, parse_tools,
    template_supports_tools, uses_tools,
)

MAX_CHOICES = 8  # n: choices of one request (each one generation; see tandem serve --draft-slots)
MAX_LOGIT_BIAS = 1024  # as the cloud's SessionLimits.max_logit_bias

CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class ApiError(Exception):
    """A request the API refuses: becomes `{"error": {...}}` with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Params:
    """What both endpoints share: sampling, length, stops, streaming."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    return_token_ids: bool
    grammar: str = ""  # response_format as an llguidance grammar (common/grammar.py); "" for text
    logprobs: int | None = None  # None: not asked for; N: each token's and the N most likely (top_logprobs)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0  # extension (vLLM's and llama.cpp's name)
    logit_bias: dict[int, float] | None = None
    n: int = 1  # independent choices

    def generate_options(self, choice: int = 0) -> dict:
        """Keyword arguments for AsyncTandemClient.deltas (edge.sdk.GenerateOptions) of one choice:
        with a seed, choice i samples with seed + i (each reproducible alone); without one, each
        choice draws its own random seed."""
        seed = None if self.seed is None else (self.seed + choice) % 2**64
        return dict(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                    top_k=self.top_k, seed=seed, stop=self.stop, grammar=self.grammar,
                    logprobs=self.logprobs, frequency_penalty=self.frequency_penalty,
                    presence_penalty=self.presence_penalty, repetition_penalty=self.repetition_penalty,
                    logit_bias=self.logit_bias)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]  # [{"role": system|user|assistant|tool, "content": str, tool_calls, tool_call_id}]
    params: Params
    tools: ToolRequest | None = None


@dataclass(frozen=True)
class TextRequest:
    prompt: str | list[int]  # text, or token ids
    params: Params


def parse_chat(body: object, default_max_tokens: int) -> ChatRequest:
    body = _object(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty array of {role, content} objects", "messages")
    params = _params(body, default_max_tokens, chat=True)
    try:
        parsed = [_message(m, i) for i, m in enumerate(messages)]
        tools = parse_tools(body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls"))
        forced = tools.grammar() if tools else ""
    except ToolsError as e:
        raise ApiError(400, str(e), e.param) from None
    if forced:
        if params.grammar:
            raise ApiError(400, "`response_format` and a forced `tool_choice` (\"required\" or a function) cannot "
                                "both shape the answer: set one", "response_format")
        params = dataclasses.replace(params, grammar=forced)
    return ChatRequest(parsed, params, tools)


def check_chat_template(request: ChatRequest, template: str) -> None:
    """A 400 for tools, or tool calls and results in the conversation, that the target's chat
    template cannot render (edge/tool_calls.py)."""
    if template_supports_tools(template):
        return
    if request.tools is not None and request.tools.rendered:
        raise ApiError(400, "`tools`: the model's chat template has no tool support (tools are rendered with "
                            "templates that write Hermes/Qwen-style <tool_call> blocks); leave `tools` unset or "
                            "set `tool_choice: \"none\"`", "tools")
    index = uses_tools(request.messages)
    if index is not None:
        raise ApiError(400, f"messages[{index}]: the model's chat template cannot render tool calls or tool "
                            "results", f"messages[{index}]")


def parse_completion(body: object, default_max_tokens: int) -> TextRequest:
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list) and prompt and all(_is_int(t) and t >= 0 for t in prompt):
        pass  # token ids
    elif not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "`prompt` must be a non-empty string or array of token ids (one prompt per "
                            "request)", "prompt")
    if body.get("echo"):
        raise ApiError(400, "`echo` is not supported", "echo")
    if body.get("suffix"):
        raise ApiError(400, "`suffix` (insertion) is not supported", "suffix")
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "`best_of` must be 1", "best_of")
    return TextRequest(prompt, _params(body, default_max_tokens, chat=False))


def _object(body: object) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _message(message: object, index: int) -> dict:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(400, f"{param} must be an object with `role` and `content`", param)
    role = CHAT_ROLES.get(message.get("role"))
    if role is None:
        raise ApiError(400, f"{param}.role must be one of {sorted(CHAT_ROLES)}, got {message.get('role')!r}",
                       f"{param}.role")
    if message.get("function_call"):
        raise ApiError(400, "`function_call` (the legacy form) is not supported: use `tool_calls`",
                       f"{param}.function_call")
    return chat_message(message, role, _content(message.get("content"), param), param)


def _content(content: object, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
    raise ApiError(400, f"{param}.content must be a string or an array of text parts (images and audio "
                        "are not supported)", f"{param}.content")


def _params(body: dict, default_max_tokens: int, chat: bool) -> Params:
    for name in ("functions", "function_call") + (() if chat else ("tools", "tool_choice")):
        if body.get(name):
            raise ApiError(400, f"`{name}` is not supported here" + (" (tools: use `tools` and `tool_choice` on "
                                "/v1/chat/completions)" if chat else " (tools are a chat completions feature)"), name)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    stream = _bool(body, "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "`stream_options` must be an object", "stream_options")
    return Params(
        max_tokens=default_max_tokens if max_tokens is None else _integer(max_tokens, "max_tokens", 1),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=0 if body.get("top_k") is None else _integer(body["top_k"], "top_k", 0),
        seed=None if body.get("seed") is None else _integer(body["seed"], "seed", 0, 2**64 - 1),
        stop=_stop(body.get("stop")),
        stream=stream,
        include_usage=stream and _bool(stream_options, "include_usage"),
        return_token_ids=_bool(body, "return_token_ids"),
        grammar=_response_format(body.get("response_format")),
        logprobs=_logprobs(body, chat),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 100.0, low_open=True),
        logit_bias=_logit_bias(body.get("logit_bias")),
        n=1 if body.get("n") is None else _integer(body["n"], "n", 1, MAX_CHOICES),
    )


def _logit_bias(value: object) -> dict[int, float] | None:
    """OpenAI's logit_bias: {"token id": bias in [-100, 100]} (ids as strings, JSON keys)."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise ApiError(400, f"`logit_bias` must be an object of at most {MAX_LOGIT_BIAS} token ids", "logit_bias")
    out = {}
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isdigit()) or isinstance(bias, bool) or not isinstance(bias, (int, float)) \
                or not -100 <= bias <= 100:
            raise ApiError(400, f"`logit_bias` maps token ids to numbers in [-100, 100], got {key!r}: {bias!r}",
                           "logit_bias")
        out[int(key)] = float(bias)
    return out


def _logprobs(body: dict, chat: bool) -> int | None:
    """Chat: `logprobs` (bool) and `top_logprobs` (0..20); completions: `logprobs` N (0..20)."""
    if not chat:
        value = body.get("logprobs")
        return None if value is None else _integer(value, "logprobs", 0, MAX_TOP_LOGPROBS)
    wanted = _bool(body, "logprobs")
    top = body.get("top_logprobs")
    if top is None:
        return 0 if wanted else None
    top = _integer(top, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if not wanted:
        raise ApiError(400, "`top_logprobs` needs `logprobs: true`", "top_logprobs")
    return top


def _response_format(value: object) -> str:
    """OpenAI's response_format as a grammar: "" for text, any JSON object for json_object, the
    schema's JSON for json_schema ({"type": "json_schema", "json_schema": {"name", "schema", "strict"}})."""
    if value is None:
        return ""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return ""
    try:
        if kind == "json_object":
            return json_object_grammar()
        if kind == "json_schema":
            spec = value.get("json_schema")
            if not isinstance(spec, dict) or "schema" not in spec:
                raise ApiError(400, "`response_format.json_schema` must be an object with a `schema`",
                               "response_format.json_schema")
            return json_schema_grammar(spec["schema"], "response_format.json_schema.schema")
    except InvalidArgument as e:
        raise ApiError(400, str(e), "response_format.json_schema.schema") from None
    raise ApiError(400, "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\", "
                        f"got {kind!r}", "response_format")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(value: object, name: str, low: int, high: int | None = None) -> int:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ApiError(400, f"`{name}` must be an integer {bounds}, got {value!r}", name)
    return value


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or value > high or value < low or (low_open and value == low)):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError(400, f"`{name}` must be a number in {bounds}, got {value!r}", name)
    return float(value)


def _bool(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"`{name}` must be true or false, got {value!r}", name)
    return value


def _stop(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stops)):
        raise ApiError(400, f"`stop` must be a non-empty string or an array of at most {MAX_STOP_STRINGS} "
                            "non-empty strings", "stop")
    return tuple(stops)


class ResponseBuilder:
    """The response, or the stream of chunks, of one chat or text completion."""

    def __init__(self, chat: bool, model: str, params: Params, prompt_token_ids: list[int],
                 token_bytes: Callable[[int], bytes] | None = None, tools: ToolRequest | None = None):
        """token_bytes: a token id's text bytes, for log-probabilities (needed when asked for); tools:
        the request's, whose calls are parsed out of the answer (unless tool_choice is "none")."""
        self.token_bytes = token_bytes
        self.tools = tools if tools is not None and tools.parses else None
        self._tool_stream: ToolCallStream | None = None  # this choice's, when streamed with tools
        self.index = 0  # the choice this builder writes (n > 1: one builder per choice, see for_choice)
        self._text_offset = 0  # completions' logprobs.text_offset of the next token
        self.chat = chat
        self.model = model
        self.params = params
        self.prompt_token_ids = prompt_token_ids
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self._sent_role = False  # the first chat chunk carries the role
        self._sent_prompt_ids = False  # the first chunk carries prompt_token_ids (if asked for)

    def for_choice(self, index: int) -> ResponseBuilder:
        """The builder of choice `index` of the same response (same id; the prompt's ids, when asked
        for, come with choice 0 only)."""
        other = copy.copy(self)
        other.index, other._sent_role, other._text_offset, other._tool_stream = index, False, 0, None
        other._sent_prompt_ids = index > 0 or self._sent_prompt_ids
        return other

    def responses(self, completions: list[Completion]) -> dict:
        """The response of n choices: choice i from completions[i], usage summed; with n > 1 each
        choice also carries its own `tandem` details."""
        bodies = [self.for_choice(i).response(c) if i else self.response(c) for i, c in enumerate(completions)]
        out = bodies[0]
        if len(bodies) > 1:
            for body in bodies:
                body["choices"][0]["tandem"] = body["tandem"]
            out["choices"] = [body["choices"][0] for body in bodies]
            out["usage"] = self.usage_of(completions)
            out["degraded"] = any(c.degraded for c in completions)
        return out

    def usage_of(self, completions: list[Completion]) -> dict:
        prompt, answer = len(self.prompt_token_ids), sum(len(c.token_ids) for c in completions)
        return {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}

    def _envelope(self, chunk: bool, choices: list[dict], degraded: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
               "system_fingerprint": None, "choices": choices, "degraded": degraded}
        if chunk and self.params.include_usage:
            out["usage"] = None  # as OpenAI does: only the last chunk carries usage
        return out

    def _choice(self, text: str | None, finish_reason: str | None, token_ids: list[int] | None,
                chunk: bool, logprobs: list[TokenLogprob | None] | None = None,
                calls: list[ToolCall] = (), first_call: int = 0) -> dict:
        """calls: tool calls of the message, or of this chunk (the choice's calls from first_call on)."""
        if self.chat and chunk:
            delta = {} if text is None else {"content": text}
            if calls:
                delta["tool_calls"] = [c.as_openai(first_call + i) for i, c in enumerate(calls)]
            if not self._sent_role:
                delta, self._sent_role = {"role": "assistant", **delta}, True
            choice = {"index": self.index, "delta": delta}
        elif self.chat:
            choice = {"index": self.index, "message": {"role": "assistant", "content": text}}
            if calls:
                choice["message"]["tool_calls"] = [c.as_openai() for c in calls]
        else:
            choice = {"index": self.index, "text": text or ""}
        choice.update(finish_reason=finish_reason, logprobs=self._logprobs(token_ids, logprobs))
        if self.params.return_token_ids and token_ids is not None:
            choice["token_ids"] = token_ids
        return choice

    def _logprobs(self, token_ids: list[int] | None, logprobs: list[TokenLogprob | None] | None) -> dict | None:
        """OpenAI's `logprobs` of a choice for these tokens (None unless the request asked for them)."""
        if self.params.logprobs is None or token_ids is None:
            return None
        logprobs = logprobs or [None] * len(token_ids)
        text = lambda t: self.token_bytes(t).decode("utf-8", errors="replace")  # noqa: E731
        if self.chat:
            def entry(token: int, logprob: float) -> dict:
                return {"token": text(token), "logprob": logprob, "bytes": list(self.token_bytes(token))}
            return {"content": [
                {**entry(t, lp.logprob if lp else None),
                 "top_logprobs": [entry(i, v) for i, v in zip(lp.top_ids, lp.top_logprobs)] if lp else []}
                for t, lp in zip(token_ids, logprobs)], "refusal": None}
        offsets = []
        for t in token_ids:
            offsets.append(self._text_offset)
            self._text_offset += len(text(t))
        return {"tokens": [text(t) for t in token_ids],
                "token_logprobs": [lp.logprob if lp else None for lp in logprobs],
                "top_logprobs": [{text(i): v for i, v in zip(lp.top_ids, lp.top_logprobs)} if lp else None
                                 for lp in logprobs],
                "text_offset": offsets}

    def _tool_items(self, text: str | None, final: bool) -> tuple[str | None, list[ToolCall], int]:
        """(content, calls, index of the first call) of streamed text, through the choice's parser."""
        if self._tool_stream is None:
            self._tool_stream = ToolCallStream()
        items = (self._tool_stream.feed(text) if text else []) + (self._tool_stream.finish() if final else [])
        calls = [i for i in items if isinstance(i, ToolCall)]
        return "".join(i for i in items if isinstance(i, str)) or None, calls, self._tool_stream.calls - len(calls)

    def chunk(self, text: str, token_ids: list[int], degraded: bool, provenance: list[dict] | None = None,
              progress: dict | None = None, logprobs: list[TokenLogprob | None] | None = None) -> dict | None:
        """The chunk of newly generated text; None while tools are parsed and it may still be part of
        a call (its ids then come with a later chunk)."""
        calls, first = [], 0
        if self.tools is not None:
            text, calls, first = self._tool_items(text, final=False)
            if text is None and not calls:
                return None
        out = self._envelope(True, [self._choice(text, None, token_ids, True, logprobs, calls, first)], degraded)
        if provenance is not None:
            out["provenance"] = provenance
        if progress is not None:
            out["progress"] = progress
        return self._with_prompt_ids(out)

    def extension_chunk(self, degraded: bool, **fields) -> dict:
        """A chunk with no choices that carries only extension fields (e.g. `rewind`, edge/serve.py)."""
        return {**self._envelope(True, [], degraded), **fields}

    def final_chunk(self, completion: Completion, token_ids: list[int], provenance: list[dict] | None = None,
                    logprobs: list[TokenLogprob | None] | None = None) -> dict:
        """The chunk that carries the finish reason (and ids and text not sent yet), plus `tandem` details."""
        text, calls, first, finish = None, [], 0, completion.finish_reason
        if self.tools is not None:
            text, calls, first = self._tool_items(None, final=True)
            finish = _tool_finish(finish, self._tool_stream.calls)
        out = self._envelope(True, [self._choice(text, finish, token_ids, True, logprobs, calls, first)],
                             completion.degraded)
        if provenance:
            out["provenance"] = provenance
        out["tandem"] = details(completion)
        return self._with_prompt_ids(out)

    def _with_prompt_ids(self, chunk: dict) -> dict:
        if self.params.return_token_ids and not self._sent_prompt_ids:
            chunk["prompt_token_ids"], self._sent_prompt_ids = self.prompt_token_ids, True
        return chunk

    def usage_chunk(self, completions: list[Completion]) -> dict:
        out = self._envelope(True, [], any(c.degraded for c in completions))
        out["usage"] = self.usage_of(completions)
        return out

    def response(self, completion: Completion) -> dict:
        text, calls, finish = completion.text, [], completion.finish_reason
        if self.tools is not None:
            text, calls = parse_tool_calls(text)
            finish = _tool_finish(finish, len(calls))
        out = self._envelope(False, [self._choice(text, finish, completion.token_ids, False, completion.logprobs,
                                                  calls)], completion.degraded)
        out["usage"] = self.usage(completion)
        if self.params.return_token_ids:
            out["prompt_token_ids"] = self.prompt_token_ids
        out["tandem"] = details(completion)
        return out

    def usage(self, completion: Completion) -> dict:
        prompt, answer = len(self.prompt_token_ids), len(completion.token_ids)
        return {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}


def _tool_finish(finish_reason: str | None, calls: int) -> str | None:
    """OpenAI's finish_reason "tool_calls" for an answer that ended by itself after calling tools (one
    cut by max_tokens stays "length")."""
    return "tool_calls" if calls and finish_reason == "stop" else finish_reason


def details(completion: Completion) -> dict:
    """The `tandem` extension: who answered, where the local model took over, and why."""
    return {
        "answered_by": completion.answered_by,
        "fallback_at": completion.fallback_at,
        "fallback_reason": completion.fallback_reason or None,
        "served_by": completion.served_by,
        "stats": completion.stats,
        "provenance": completion.provenance,
        "unverified_from": completion.unverified_from,  # written offline, to check (POST /v1/tandem/verify)
    }


def progress(stats: dict) -> dict:
    """The live part of a generation's stats, for a chunk's `progress` extension."""
    return {"tokens": stats["tokens"], "rounds": stats["rounds"], "drafted": stats["drafted"],
            "accepted": stats["accepted"], "round_trip_ms": stats["policy"].get("round_trip_ms"),
            "elapsed_s": stats["elapsed_s"]}
