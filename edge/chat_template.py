"""Renders a model's chat template (Jinja, as shipped in GGUF/HF tokenizer metadata)."""

from __future__ import annotations

from functools import lru_cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHATML_FALLBACK = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(template)


def render_chat(template: str | None, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages` ([{role, content}]); ChatML when the model has no template."""
    return _compile(template or CHATML_FALLBACK).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token="", eos_token=""
    )
