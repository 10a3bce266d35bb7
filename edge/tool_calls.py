"""Tools (function calling) in the OpenAI chat API: checked, rendered, forced, parsed.

Pure: no HTTP and no model. edge/openai_api.py parses a request's `tools`, `tool_choice` and
`parallel_tool_calls` here; edge/serve.py asks whether the target's chat template can render
them; the response builder parses the answer's tool calls out of its text.

- **Rendering.** The tools go to the target's chat template as `tools=` (as transformers'
  apply_chat_template passes them); assistant messages keep their `tool_calls` (arguments as a
  JSON object, not OpenAI's string) and `role: "tool"` messages their `tool_call_id`. A
  template supports tools when it renders all three (probed once per template, as llama.cpp's
  chat-template capabilities are) and writes calls in the Hermes/Qwen form this module parses.
- **Parsing** (the Hermes/Qwen 2.5 convention, as vLLM's `hermes` tool parser reads it): every
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in the answer whose JSON has a
  string `name` becomes a call; the text around the calls is the message's content (None when
  only whitespace). A block that does not parse stays content. `ToolCallStream` does the same
  incrementally, for `delta.tool_calls`: text is held back while it may still open a call, and
  a call is sent whole (id, name, arguments) once its closing tag arrives.
- **Forcing** (`tool_choice: "required"` or a named function): an llguidance grammar whose only
  sentences are one call (or, with parallel calls, up to MAX_PARALLEL_CALLS) of an allowed
  function, its arguments valid under the function's `parameters` schema. It is applied like
  `response_format`'s mask (common/grammar.py): by the cloud at every verified position, by the
  edge to its drafts, so the answer is the target's own greedy (or sampled) answer under it.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from functools import lru_cache

from common.errors import InvalidArgument
from common.grammar import JSON_OPTIONS, json_schema_grammar

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
MAX_TOOLS = 128  # OpenAI's limit
MAX_PARALLEL_CALLS = 4  # calls one forced answer may make with parallel_tool_calls (the default)


class ToolsError(InvalidArgument):
    """A tools parameter the server refuses; `param` names it (OpenAI's error `param`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict  # the JSON Schema of the arguments (an empty object schema when not given)
    spec: dict  # the request's tool object, as the chat template receives it


@dataclass(frozen=True)
class ToolRequest:
    """A request's tools and how it wants them used."""

    tools: tuple[Tool, ...]
    choice: str  # "auto" | "none" | "required" | "function" (one named function)
    function: str | None = None  # the named function (choice "function")
    parallel: bool = True

    @property
    def rendered(self) -> list[dict] | None:
        """What the chat template gets as `tools` (none under tool_choice "none")."""
        return None if self.choice == "none" or not self.tools else [t.spec for t in self.tools]

    @property
    def parses(self) -> bool:
        """Whether the answer's tool calls are parsed out of its text."""
        return self.choice != "none" and bool(self.tools)

    def grammar(self) -> str:
        """The grammar that forces a call ("" unless tool_choice is "required" or a function)."""
        if self.choice == "required":
            return forced_grammar(self.tools, self.parallel)
        if self.choice == "function":
            return forced_grammar([t for t in self.tools if t.name == self.function], parallel=False)
        return ""


def parse_tools(tools: object, tool_choice: object, parallel_tool_calls: object) -> ToolRequest | None:
    """The request's tool fields checked; None when it has no tools and names no tool_choice.

    Raises ToolsError naming the parameter: a malformed tool, a `parameters` schema the grammar
    engine rejects (named down to tools[i].function.parameters), an unknown tool_choice function.
    """
    if tools is None:
        if tool_choice not in (None, "none", "auto"):
            raise ToolsError("`tool_choice` needs `tools`", "tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise ToolsError(f"`tools` must be an array of at most {MAX_TOOLS} tools", "tools")
    parsed = tuple(_tool(tool, i) for i, tool in enumerate(tools))
    names = [t.name for t in parsed]
    if len(set(names)) != len(names):
        raise ToolsError("`tools` has two functions of the same name", "tools")
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise ToolsError("`parallel_tool_calls` must be true or false", "parallel_tool_calls")
    choice, function = _choice(tool_choice, names)
    if choice == "required" and not parsed:
        raise ToolsError("`tool_choice: \"required\"` needs at least one tool", "tool_choice")
    return ToolRequest(parsed, choice, function, parallel_tool_calls is not False)


def _tool(tool: object, index: int) -> Tool:
    param = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise ToolsError(f"{param} must be {{\"type\": \"function\", \"function\": {{...}}}}", param)
    function = tool["function"]
    name = function.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ToolsError(f"{param}.function.name must be 1 to 64 letters, digits, '_' or '-', got {name!r}",
                         f"{param}.function.name")
    if not isinstance(function.get("description", ""), str):
        raise ToolsError(f"{param}.function.description must be a string", f"{param}.function.description")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}, "additionalProperties": False}
    where = f"{param}.function.parameters"
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise ToolsError(f"{where} must be a JSON Schema of an object (\"type\": \"object\")", where)
    try:
        json_schema_grammar(parameters, where)  # the grammar engine's verdict on the schema
    except InvalidArgument as e:
        raise ToolsError(str(e), where) from None
    return Tool(name, parameters, tool)


def _choice(tool_choice: object, names: list[str]) -> tuple[str, str | None]:
    if tool_choice is None:
        return "auto", None
    if tool_choice in ("auto", "none", "required"):
        return tool_choice, None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function" \
            and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        if name not in names:
            raise ToolsError(f"`tool_choice` names the function {name!r}, which is not among `tools` "
                             f"({', '.join(names)})", "tool_choice")
        return "function", name
    raise ToolsError("`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                     "\"function\": {\"name\": ...}}", "tool_choice")


# -- the forced call ---------------------------------------------------------------------------

def call_schema(tool: Tool) -> dict:
    """The JSON of one call of `tool`: {"name": its name, "arguments": valid arguments}, written as
    common/grammar.py writes JSON (the x-guidance options)."""
    return {"x-guidance": JSON_OPTIONS, "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def forced_grammar(tools, parallel: bool) -> str:
    """An llguidance (Lark) grammar: `<tool_call>\\n{call}\\n</tool_call>`, once, or with parallel
    calls up to MAX_PARALLEL_CALLS times separated by a newline; each call of one of `tools`."""
    import llguidance

    calls = " | ".join(f"call_{i}" for i in range(len(tools)))
    more = ""  # the optional further calls, nested: ("\n" tool_call ("\n" tool_call)?)?
    for _ in range(MAX_PARALLEL_CALLS - 1 if parallel else 0):
        more = f' ("\\n" tool_call{more})?'
    lines = [f"start: tool_call{more}",
             f"tool_call: {json.dumps(CALL_OPEN + chr(10))} ({calls}) {json.dumps(chr(10) + CALL_CLOSE)}"]
    lines += [f"call_{i}: %json {json.dumps(call_schema(tool), ensure_ascii=False)}" for i, tool in enumerate(tools)]
    grammar = llguidance.LLMatcher.grammar_from_lark("\n".join(lines))
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ToolsError(f"the tools' parameters make no usable grammar: {messages[0] if messages else ''}", "tools")
    return grammar


# -- the chat template -------------------------------------------------------------------------

_PROBE_TOOL = {"type": "function", "function": {"name": "tandem_probe_tool", "description": "d",
                                                 "parameters": {"type": "object", "properties": {}}}}
_PROBE_MESSAGES = [
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function",
         "function": {"name": "tandem_probe_call", "arguments": {"tandem_probe_argument": 1}}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": "tandem_probe_result"},
]


@lru_cache(maxsize=8)
def template_supports_tools(template: str) -> bool:
    """Whether `template` renders tools, assistant tool calls and tool results, writing calls as
    `<tool_call>` blocks (the form parse_tool_calls reads)."""
    from jinja2 import TemplateError

    from edge.chat_template import render_chat

    if not template or CALL_OPEN not in template:
        return False
    try:
        text = render_chat(template, _PROBE_MESSAGES, tools=[_PROBE_TOOL])
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError):
        return False
    return all(probe in text for probe in ("tandem_probe_tool", "tandem_probe_call", "tandem_probe_argument",
                                           "tandem_probe_result"))


def uses_tools(messages: list[dict]) -> int | None:
    """The index of the first message that carries tool calls or a tool result, else None."""
    for i, message in enumerate(messages):
        if message.get("role") == "tool" or message.get("tool_calls"):
            return i
    return None


def chat_message(message: dict, role: str, content: str, param: str) -> dict:
    """A message for the chat template: tool calls (arguments as JSON objects, as templates write
    them with `tojson`) and a tool result's tool_call_id kept."""
    out = {"role": role, "content": content}
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise ToolsError(f"{param}.tool_call_id must be a string", f"{param}.tool_call_id")
        out["tool_call_id"] = call_id
    calls = message.get("tool_calls")
    if calls:
        if role != "assistant" or not isinstance(calls, list):
            raise ToolsError(f"{param}.tool_calls must be an array, on an assistant message", f"{param}.tool_calls")
        out["tool_calls"] = [_call_in_history(call, f"{param}.tool_calls[{i}]") for i, call in enumerate(calls)]
    return out


def _call_in_history(call: object, param: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ToolsError(f"{param} must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                         "\"arguments\"}}}}", param)
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise ToolsError(f"{param}.function.arguments must be a JSON object (as text)",
                             f"{param}.function.arguments") from None
    return {"id": call.get("id"), "type": "function", "function": {"name": function["name"], "arguments": arguments}}


# -- parsing the answer ------------------------------------------------------------------------

@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def as_openai(self, index: int | None = None) -> dict:
        """The call in a message (index None) or in a stream's delta.tool_calls (index given)."""
        out = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def _call_of(body: str) -> ToolCall | None:
    """The call in a <tool_call> block's text, None when it is not {"name": str, "arguments": ...}."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    return ToolCall(value["name"], json.dumps(value.get("arguments", {}), ensure_ascii=False))


class ToolCallStream:
    """The answer's text in, content and whole tool calls out, as the text arrives.

    feed(text) returns what may be sent now: a list of str (content) and ToolCall items, in order;
    finish() returns what was held back. Whitespace next to a call (the newlines around
    <tool_call> blocks) is dropped; all other text is content, as written.
    """

    def __init__(self):
        self.calls = 0  # calls sent so far
        self._held = ""  # text not yet judged
        self._inside = False  # _held is the body of an open <tool_call>
        self._space = ""  # trailing whitespace of the content, held back: dropped if a call follows
        self._after_call = False  # nothing but whitespace since the last call

    def feed(self, text: str) -> list[str | ToolCall]:
        self._held += text
        out: list[str | ToolCall] = []
        while True:
            if self._inside:
                end = self._held.find(CALL_CLOSE)
                if end < 0:
                    return out
                body, self._held, self._inside = self._held[:end], self._held[end + len(CALL_CLOSE):], False
                call = _call_of(body)
                if call is None:
                    self._content(CALL_OPEN + body + CALL_CLOSE, out)
                else:
                    self.calls += 1
                    self._space, self._after_call = "", True
                    out.append(call)
                continue
            start = self._held.find(CALL_OPEN)
            if start >= 0:
                self._content(self._held[:start], out)
                self._held, self._inside = self._held[start + len(CALL_OPEN):], True
                continue
            keep = _open_prefix_length(self._held)
            self._content(self._held[: len(self._held) - keep], out)
            self._held = self._held[len(self._held) - keep:]
            return out

    def finish(self) -> list[str | ToolCall]:
        """What remains: an unclosed call's text is content (never passed off as a call)."""
        out: list[str | ToolCall] = []
        rest, self._held = (CALL_OPEN if self._inside else "") + self._held, ""
        self._inside = False
        self._content(rest, out)
        if self._space:
            out.append(self._space)
            self._space = ""
        return out

    def _content(self, text: str, out: list) -> None:
        if self._after_call:
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        text = self._space + text
        body = text.rstrip()
        self._space = text[len(body):]
        if body:
            out.append(body)


def _open_prefix_length(text: str) -> int:
    """The length of the longest end of `text` that begins CALL_OPEN (held back: it may open one)."""
    for length in range(min(len(text), len(CALL_OPEN) - 1), 0, -1):
        if CALL_OPEN.startswith(text[-length:]):
            return length
    return 0


def parse_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """The content (None when empty) and the tool calls of a whole answer."""
    stream = ToolCallStream()
    items = stream.feed(text) + stream.finish()
    content = "".join(i for i in items if isinstance(i, str))
    return content or None, [i for i in items if isinstance(i, ToolCall)]
