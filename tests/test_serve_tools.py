"""Tools through the official openai client against a real `tandem serve` process: the prompt is
the target's chat template rendered with the tools (as transformers renders it); a forced call
(`tool_choice` "required" or a named function) is the target's own greedy answer under the
forced-call grammar (transformers' generate with the same mask as a logits processor), parsed
into OpenAI's `tool_calls`, streamed and not, its arguments valid under the function's schema;
and what cannot work is a 400 that names the parameter."""

from __future__ import annotations

import json
from collections import defaultdict

import jsonschema
import openai
import pytest
from grammar_reference import hf_greedy_constrained
from local_server import LocalServer
from serve_process import serve_process
from tool_models import TIME, WEATHER, build_tool_target

from bench.tiny_models import hf_greedy
from edge.tool_calls import parse_tools

MESSAGES = [{"role": "user", "content": "What is the weather in Tokyo?"}]
MAX_TOKENS = 200  # room for the longest forced answer (MAX_PARALLEL_CALLS calls) and its end


@pytest.fixture(scope="module")
def tool_target(tiny_models, tmp_path_factory):
    from cloud.model import LoadOptions, TargetModel

    path = build_tool_target(tmp_path_factory.mktemp("tools") / "target", tiny_models.target_dir)
    return TargetModel.load(str(path), LoadOptions(device="cpu", threads=1))


@pytest.fixture(scope="module")
def tool_cloud(tool_target):
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=tool_target) as cloud:
        yield cloud


@pytest.fixture(scope="module")
def client(tool_cloud, tiny_models):
    """The openai client of a `tandem serve` process (hybrid, the noisy draft) before the tool cloud."""
    with serve_process(tool_cloud.address, tiny_models.drafts["noisy"], 1024) as (base_url, _), \
            openai.OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=120) as c:
        yield c


def _prompt(tool_target, messages, tools) -> list[int]:
    """The reference prompt: transformers' apply_chat_template with the tools."""
    text = tool_target.text.hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    return tool_target.tokenize(text)


def _answer(client, stream: bool, **args) -> dict:
    """content, tool_calls [{id, name, arguments}], finish, ids and prompt ids of one choice."""
    response = client.chat.completions.create(model="tandem", temperature=0, max_tokens=MAX_TOKENS, stream=stream,
                                              extra_body={"return_token_ids": True}, **args)
    if not stream:
        choice = response.choices[0]
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in choice.message.tool_calls or []]
        return {"content": choice.message.content, "calls": calls, "finish": choice.finish_reason,
                "ids": choice.model_extra["token_ids"], "prompt_ids": response.model_extra["prompt_token_ids"]}
    out = {"content": "", "finish": None, "ids": [], "prompt_ids": None}
    calls = defaultdict(lambda: {"id": None, "name": "", "arguments": ""})
    for chunk in response:
        out["prompt_ids"] = out["prompt_ids"] or (chunk.model_extra or {}).get("prompt_token_ids")
        for choice in chunk.choices:
            out["ids"] += (choice.model_extra or {}).get("token_ids") or []
            out["content"] += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:  # accumulated by index, as OpenAI's docs do
                calls[call.index]["id"] = call.id or calls[call.index]["id"]
                calls[call.index]["name"] += call.function.name or ""
                calls[call.index]["arguments"] += call.function.arguments or ""
            out["finish"] = choice.finish_reason or out["finish"]
    out["calls"] = [calls[i] for i in sorted(calls)]
    out["content"] = out["content"] or None
    return out


def _check_calls(answer: dict, tools: list[dict], names: set[str]) -> None:
    """Every call names one of `names`, its arguments valid under that function's schema."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert answer["finish"] == "tool_calls" and answer["calls"] and answer["content"] is None
    for call in answer["calls"]:
        assert call["name"] in names and call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["arguments"]), schemas[call["name"]])


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_call_is_the_targets_forced_answer(client, tool_target, stream):
    tools = [WEATHER, TIME]
    answer = _answer(client, stream, messages=MESSAGES, tools=tools, tool_choice="required")
    prompt = _prompt(tool_target, MESSAGES, tools)
    assert answer["prompt_ids"] == prompt
    grammar = parse_tools(tools, "required", None).grammar()
    assert answer["ids"] == hf_greedy_constrained(tool_target, prompt, MAX_TOKENS, grammar)
    _check_calls(answer, tools, {"get_weather", "get_time"})


@pytest.mark.parametrize("stream", [False, True])
def test_named_function_is_the_targets_forced_answer(client, tool_target, stream):
    tools = [WEATHER, TIME]
    choice = {"type": "function", "function": {"name": "get_time"}}
    answer = _answer(client, stream, messages=MESSAGES, tools=tools, tool_choice=choice)
    grammar = parse_tools(tools, choice, None).grammar()
    assert answer["ids"] == hf_greedy_constrained(tool_target, _prompt(tool_target, MESSAGES, tools), MAX_TOKENS,
                                                  grammar)
    _check_calls(answer, tools, {"get_time"})
    assert len(answer["calls"]) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_conversation_with_calls_and_results_is_the_targets_answer(client, tool_target, stream):
    """tool_choice "auto": the template renders the earlier call and its result; the answer is the
    target's own greedy answer (no constraint), parsed: here text, all of it content."""
    messages = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Tokyo", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees, sunny"},
    ]
    answer = _answer(client, stream, messages=messages, tools=[WEATHER], max_completion_tokens=24)
    reference = [dict(m, tool_calls=[{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}}}]) if m.get("tool_calls") else m
        for m in messages]
    prompt = _prompt(tool_target, reference, [WEATHER])
    assert answer["prompt_ids"] == prompt
    expected = hf_greedy(tool_target, prompt, 24)
    assert answer["ids"] == expected
    assert answer["finish"] in ("stop", "length") and not answer["calls"]  # this random model writes text
    text = b"".join(tool_target.token_bytes(t) for t in expected if t not in tool_target.eos_token_ids)
    assert answer["content"] == text.decode("utf-8", errors="replace")  # held-back text all arrives


def test_n_choices_each_parse_their_own_calls(client, tool_target):
    response = client.chat.completions.create(
        model="tandem", messages=MESSAGES, tools=[WEATHER, TIME], tool_choice="required", n=2, stream=True,
        temperature=1.0, seed=5, max_tokens=MAX_TOKENS)
    calls = defaultdict(list)
    finish = {}
    for chunk in response:
        for choice in chunk.choices:
            calls[choice.index] += [(c.index, c.function.name, c.function.arguments)
                                    for c in choice.delta.tool_calls or []]
            finish[choice.index] = choice.finish_reason or finish.get(choice.index)
    assert sorted(calls) == [0, 1] and finish == {0: "tool_calls", 1: "tool_calls"}
    for index, made in calls.items():
        assert [i for i, _, _ in made] == list(range(len(made)))  # each choice numbers its own calls
        for _, name, arguments in made:
            jsonschema.validate(json.loads(arguments), {"get_weather": WEATHER, "get_time": TIME}[name]
                                ["function"]["parameters"])


def _refused(client, param: str, **args) -> str:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tandem", max_tokens=4, **args)
    assert caught.value.status_code == 400 and caught.value.body["type"] == "invalid_request_error"
    assert caught.value.body["param"] == param
    return caught.value.body["message"]


def test_bad_tools_are_400s_naming_the_parameter(client):
    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}
    _refused(client, "tools[1].function.parameters", messages=MESSAGES, tools=[WEATHER, bad_schema])
    _refused(client, "tool_choice", messages=MESSAGES, tools=[WEATHER],
             tool_choice={"type": "function", "function": {"name": "get_time"}})
    _refused(client, "response_format", messages=MESSAGES, tools=[WEATHER], tool_choice="required",
             response_format={"type": "json_object"})
    _refused(client, "messages[1].tool_calls[0].function.arguments", messages=MESSAGES + [
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{oops"}}]}])


@pytest.fixture(scope="module")
def plain(tiny_cloud, tiny_drafter):
    """A server before the tiny target whose template (SmolLM2's ChatML) has no tool support."""
    with LocalServer(tiny_drafter("noisy"), tiny_cloud.address) as server:
        with openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=60) as c:
            yield c


def test_a_template_without_tools_is_a_400_naming_tools(plain):
    message = _refused(plain, "tools", messages=MESSAGES, tools=[WEATHER])
    assert "chat template" in message
    _refused(plain, "tools", messages=MESSAGES, tools=[WEATHER], tool_choice="required")
    _refused(plain, "messages[1]", messages=MESSAGES + [{"role": "tool", "tool_call_id": "c", "content": "x"}])
    # tool_choice "none" renders no tools: the template needs none
    answer = plain.chat.completions.create(model="tandem", messages=MESSAGES, tools=[WEATHER], tool_choice="none",
                                           max_tokens=4)
    assert answer.choices[0].message.tool_calls is None
