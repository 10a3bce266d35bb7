"""edge/tool_calls.py, pure: tools checked with the parameter named, rendered as transformers
renders them, the forced-call grammar's sentences, and tool calls parsed out of an answer, whole
or streamed in any split."""

from __future__ import annotations

import json
import random

import pytest
from tool_models import TIME, TOOLS_TEMPLATE, WEATHER

from common.chat_templates import CHATML, GEMMA
from common.grammar import GrammarMask, llg_tokenizer
from edge.chat_template import render_chat
from edge.tool_calls import (
    ToolCallStream, ToolsError, chat_message, parse_tool_calls, parse_tools, template_supports_tools,
)

SMOLLM2_TEMPLATE = (  # SmolLM2-135M-Instruct's own (the default target's): no tools
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京", "unit": "celsius"}}\n</tool_call>'
ANSWERS = [  # (text, content, [(name, arguments)])
    ("Plain text, no call.\n", "Plain text, no call.\n", []),
    (CALL, None, [("get_weather", {"city": "東京", "unit": "celsius"})]),
    ("Let me look.\n" + CALL, "Let me look.", [("get_weather", {"city": "東京", "unit": "celsius"})]),
    (CALL + "\n" + CALL.replace("東京", "Paris") + "\n", None,
     [("get_weather", {"city": "東京", "unit": "celsius"}), ("get_weather", {"city": "Paris", "unit": "celsius"})]),
    ("<tool_call>\nnot json\n</tool_call> after", "<tool_call>\nnot json\n</tool_call> after", []),
    ("a < b and <tool", "a < b and <tool", []),
    ("cut: <tool_call>\n{\"name\": \"get_wea", "cut: <tool_call>\n{\"name\": \"get_wea", []),
    ('<tool_call>{"name": "f"}</tool_call>', None, [("f", {})]),
]


@pytest.mark.parametrize("text,content,calls", ANSWERS)
def test_parse_tool_calls(text, content, calls):
    parsed_content, parsed = parse_tool_calls(text)
    assert parsed_content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == calls
    assert len({c.id for c in parsed}) == len(parsed)


@pytest.mark.parametrize("text,content,calls", ANSWERS)
def test_streaming_in_any_split_parses_as_the_whole(text, content, calls):
    rng = random.Random(0)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        stream, items = ToolCallStream(), []
        for piece in pieces:
            items += stream.feed(piece)
        items += stream.finish()
        assert ("".join(i for i in items if isinstance(i, str)) or None) == content
        assert [(c.name, json.loads(c.arguments)) for c in items if not isinstance(c, str)] == calls


def test_text_that_may_open_a_call_is_held_back_until_it_cannot():
    stream = ToolCallStream()
    assert stream.feed("Hi <tool") == ["Hi"]  # the space too: it is dropped if a call follows
    assert stream.feed("box>") == [" <toolbox>"]


@pytest.mark.parametrize("tools,choice,param", [
    ("get_weather", None, "tools"),
    ([{"type": "function"}], None, "tools[0]"),
    ([{"type": "function", "function": {"name": "bad name"}}], None, "tools[0].function.name"),
    ([WEATHER, {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], None,
     "tools[1].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}], None, "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}], None, "tools[0].function.parameters"),
    ([WEATHER, WEATHER], None, "tools"),
    ([WEATHER], {"type": "function", "function": {"name": "get_time"}}, "tool_choice"),
    ([WEATHER], "sometimes", "tool_choice"),
    (None, "required", "tool_choice"),
])
def test_bad_tools_name_the_parameter(tools, choice, param):
    with pytest.raises(ToolsError) as caught:
        parse_tools(tools, choice, None)
    assert caught.value.param == param


def test_tool_choice_values():
    assert parse_tools(None, None, None) is None
    auto = parse_tools([WEATHER, TIME], None, None)
    assert auto.choice == "auto" and auto.parses and auto.rendered == [WEATHER, TIME] and auto.grammar() == ""
    none = parse_tools([WEATHER], "none", None)
    assert not none.parses and none.rendered is None and none.grammar() == ""
    assert parse_tools([WEATHER], "required", None).grammar()
    named = parse_tools([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}}, False)
    assert named.choice == "function" and named.function == "get_time" and not named.parallel


def test_which_templates_support_tools():
    assert template_supports_tools(TOOLS_TEMPLATE)
    for template in (SMOLLM2_TEMPLATE, CHATML, GEMMA, ""):
        assert not template_supports_tools(template)


def test_tools_render_as_transformers_renders_them(tiny_models):
    """The tools, a call in the history (arguments sent as OpenAI's JSON text) and its result,
    through our renderer and through transformers' apply_chat_template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.target_dir)
    request = [
        {"role": "user", "content": "Weather in Tokyo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "東京", "unit": "celsius"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"},
    ]
    messages = [chat_message(m, m["role"], m["content"] or "", f"messages[{i}]") for i, m in enumerate(request)]
    ours = render_chat(TOOLS_TEMPLATE, messages, tools=[WEATHER, TIME])
    theirs = tokenizer.apply_chat_template(messages, tools=[WEATHER, TIME], chat_template=TOOLS_TEMPLATE,
                                           add_generation_prompt=True, tokenize=False)
    assert ours == theirs
    assert '"city": "東京"' in ours and "<tool_response>\n22 degrees\n</tool_response>" in ours


def test_forced_grammar_takes_exactly_the_calls_it_should(tiny_target):
    tokenizer = llg_tokenizer(tiny_target.text, tiny_target.vocab_size)
    end = tiny_target.eos_token_ids[0]

    def takes(grammar: str, text: str) -> bool:
        """Whether the grammar takes `text` whole and then lets the answer end."""
        mask = GrammarMask(grammar, tokenizer, tiny_target.vocab_size)
        ids = tiny_target.text.tokenize(text)
        return mask.sync(ids) and bool(mask.allowed()[end])

    required = parse_tools([WEATHER, TIME], "required", None).grammar()
    time_call = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC", "precise": true}}\n</tool_call>'
    assert takes(required, CALL) and takes(required, time_call) and takes(required, CALL + "\n" + time_call)
    assert not takes(required, CALL.replace("celsius", "kelvin"))  # arguments outside the schema
    assert not takes(required, CALL.replace("get_weather", "get_wetter"))  # no such function
    assert not takes(required, CALL.replace('"unit": "celsius"', '"units": "celsius"'))
    assert not takes(required, "Sure! " + CALL)  # a forced answer is the call
    assert not takes(required, CALL.replace('": ', '":  '))  # JSON written one way (common/grammar.py)
    assert not takes(required, "\n".join([CALL] * 5))  # at most MAX_PARALLEL_CALLS
    single = parse_tools([WEATHER, TIME], "required", False).grammar()
    assert takes(single, CALL) and not takes(single, CALL + "\n" + CALL)
    named = parse_tools([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}}, None).grammar()
    assert takes(named, time_call) and not takes(named, CALL)
