"""Renders a model's chat template (Jinja, as shipped in GGUF/HF tokenizer metadata)."""

from __future__ import annotations

import json
from functools import lru_cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from common.chat_templates import CHATML


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
        # transformers' tojson (apply_chat_template), not Jinja's HTML-safe one: tool schemas and
        # call arguments reach the model as plain JSON.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment.globals["raise_exception"] = raise_exception
    environment.filters["tojson"] = tojson
    return environment.from_string(template)


def render_chat(template: str | None, messages: list[dict], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", tools: list[dict] | None = None) -> str:
    """The prompt text for `messages` ([{role, content}]); ChatML when the model has no template.

    bos_token and eos_token are the target's texts: a template that writes `bos_token` gets
    the real one (the caller then adds no second BOS: common/special_tokens.py). tools: OpenAI
    tool objects, passed as transformers' apply_chat_template passes them (edge/tool_calls.py
    says which templates render them).
    """
    extra = {} if tools is None else {"tools": tools}
    return _compile(template or CHATML).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token,
        **extra)
