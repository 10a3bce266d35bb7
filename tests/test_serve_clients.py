"""Real clients, unchanged, against a real `tandem serve` process: the official openai package with
response_format json_schema, logprobs/top_logprobs, n = 3 and penalties, each streamed and not (tools:
tests/test_serve_tools.py); and,
in-process, n > 1's properties (independent choices, seeded per choice, usage summed)."""

from __future__ import annotations

import json
from collections import defaultdict

import openai
import pytest
from grammar_reference import SCHEMAS, hf_greedy_constrained, hf_greedy_served
from local_server import LocalServer
from serve_process import serve_process

from common.grammar import json_schema_grammar
from common.wire import SamplingParams
from edge.chat_template import render_chat

MESSAGES = [{"role": "user", "content": "Describe a colour as JSON."}]


def _collect(response, stream: bool) -> dict[int, dict]:
    """Per choice index: token ids, text, logprob entries and finish reason, streamed or not."""
    out = defaultdict(lambda: {"ids": [], "text": "", "logprobs": [], "finish": None})
    if not stream:
        for choice in response.choices:
            out[choice.index] = {"ids": choice.model_extra["token_ids"], "text": choice.message.content,
                                 "logprobs": choice.logprobs.content if choice.logprobs else [],
                                 "finish": choice.finish_reason}
        return dict(out)
    for chunk in response:
        for choice in chunk.choices:
            c = out[choice.index]
            c["ids"] += (choice.model_extra or {}).get("token_ids") or []
            c["text"] += choice.delta.content or ""
            c["logprobs"] += choice.logprobs.content if choice.logprobs else []
            c["finish"] = choice.finish_reason or c["finish"]
    return dict(out)


@pytest.fixture(scope="module")
def serve_url(tiny_cloud, tiny_models):
    with serve_process(tiny_cloud.address, tiny_models.drafts["noisy"]) as (base_url, _):
        yield base_url


@pytest.fixture(scope="module")
def client(serve_url):
    with openai.OpenAI(base_url=serve_url, api_key="-", max_retries=0, timeout=120) as c:
        yield c


@pytest.mark.parametrize("stream", [False, True])
def test_openai_json_schema_logprobs_n_and_penalties(client, tiny_target, tiny_drafter, stream):
    drafter = tiny_drafter("noisy")
    schema = SCHEMAS[3]
    prompt = drafter.tokenize(render_chat(drafter.chat_template, MESSAGES))
    response = client.chat.completions.create(
        model="tandem", messages=MESSAGES, temperature=0, max_tokens=16, n=3, logprobs=True, top_logprobs=5,
        presence_penalty=0.5, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        stream=stream, extra_body={"return_token_ids": True})
    choices = _collect(response, stream)
    expected = hf_greedy_served(tiny_target, prompt, 16, SamplingParams(presence_penalty=0.5), json_schema_grammar(schema))
    assert sorted(choices) == [0, 1, 2]
    for choice in choices.values():  # greedy: every choice are the target's constrained, penalized answer
        assert choice["ids"] == expected
        # Up to 5 alternatives: where the grammar allows fewer tokens, only those (the rest have p = 0).
        assert len(choice["logprobs"]) == len(expected) and all(1 <= len(e.top_logprobs) <= 5 for e in choice["logprobs"])
        assert any(len(e.top_logprobs) == 5 for e in choice["logprobs"])
        if choice["finish"] == "stop":
            assert json.loads(choice["text"])["answer"] in ("yes", "no", "maybe")
        else:
            assert choice["finish"] == "length" and len(expected) == 16


@pytest.fixture(scope="module")
def local(tiny_cloud, tiny_drafter):
    with LocalServer(tiny_drafter("noisy"), tiny_cloud.address) as server:
        with openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=120) as c:
            yield c


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_are_independent_and_seeded_per_choice(local, stream):
    args = dict(model="tandem", messages=MESSAGES, temperature=1.0, max_tokens=8, seed=11,
                extra_body={"return_token_ids": True})
    response = local.chat.completions.create(n=3, stream=stream, **({"stream_options": {"include_usage": True}}
                                                                     if stream else {}), **args)
    if stream:
        chunks = list(response)
        choices, usage = _collect(iter(chunks), True), chunks[-1].usage
    else:
        choices, usage = _collect(response, False), response.usage
    assert sorted(choices) == [0, 1, 2]
    for i, choice in choices.items():  # choice i is the answer of seed 11 + i alone
        alone = local.chat.completions.create(**{**args, "seed": 11 + i}).choices[0]
        assert choice["ids"] == alone.model_extra["token_ids"] and choice["text"] == alone.message.content
    assert len({tuple(c["ids"]) for c in choices.values()}) > 1  # independent draws differ here
    assert usage.completion_tokens == sum(len(c["ids"]) for c in choices.values())


def test_greedy_n_under_a_schema(local, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    schema = SCHEMAS[0]
    response = local.chat.completions.create(
        model="tandem", messages=MESSAGES, temperature=0, max_tokens=12, n=2,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
        extra_body={"return_token_ids": True})
    prompt = drafter.tokenize(render_chat(drafter.chat_template, MESSAGES))
    expected = hf_greedy_constrained(tiny_target, prompt, 12, json_schema_grammar(schema))
    assert [c.model_extra["token_ids"] for c in response.choices] == [expected, expected]
