"""`response_format` on `tandem serve`, through the official openai client: the answer is the
target's own constrained greedy answer (transformers' generate with the same grammar mask), and
bad schemas are 400s in OpenAI's error shape that name the parameter."""

from __future__ import annotations

import json

import openai
import pytest
from grammar_reference import SCHEMAS, hf_greedy_constrained

from common.grammar import json_object_grammar, json_schema_grammar
from edge.chat_template import render_chat

MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


def _json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


@pytest.mark.parametrize("schema_index", [0, 8, 9])
@pytest.mark.parametrize("stream", [False, True])
def test_chat_json_schema_is_the_targets_constrained_answer(client, tiny_target, tiny_drafter, schema_index, stream):
    drafter = tiny_drafter("noisy")
    schema = SCHEMAS[schema_index]
    prompt = drafter.tokenize(render_chat(drafter.chat_template, MESSAGES))
    expected = hf_greedy_constrained(tiny_target, prompt, 20, json_schema_grammar(schema))
    args = dict(model="tandem", messages=MESSAGES, temperature=0, max_tokens=20,
                response_format=_json_schema(schema), extra_body={"return_token_ids": True})
    if stream:
        ids, text, finish = [], "", None
        for chunk in client.chat.completions.create(stream=True, **args):
            choice = chunk.choices[0]
            ids += (choice.model_extra or {}).get("token_ids") or []
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    else:
        choice = client.chat.completions.create(**args).choices[0]
        ids, text, finish = choice.model_extra["token_ids"], choice.message.content, choice.finish_reason
    assert ids == expected
    assert text == b"".join(tiny_target.token_bytes(t) for t in ids).decode("utf-8", errors="replace")
    if finish == "stop":
        json.loads(text)
    else:  # inside an unfinished object: never passed off as complete
        assert finish == "length" and len(ids) == 20


def test_max_tokens_inside_an_object_is_length(client):
    choice = client.chat.completions.create(model="tandem", messages=MESSAGES, temperature=0, max_tokens=3,
                                            response_format=_json_schema(SCHEMAS[5])).choices[0]
    assert choice.finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice.message.content)


def test_completions_json_object(client, tiny_target, tiny_drafter):
    prompt = "A JSON object:"
    prompt_ids = tiny_drafter("noisy").tokenize(prompt)
    response = client.completions.create(model="tandem", prompt=prompt, temperature=0, max_tokens=16,
                                         extra_body={"return_token_ids": True,
                                                     "response_format": {"type": "json_object"}})
    # openai's completions.create has no response_format argument (vLLM's and llama.cpp's
    # servers take it as a body field there too).
    ids = response.choices[0].model_extra["token_ids"]
    assert ids == hf_greedy_constrained(tiny_target, prompt_ids, 16, json_object_grammar())
    assert response.choices[0].text.startswith("{")


@pytest.mark.parametrize("response_format,param", [
    (_json_schema({"type": "objectx"}), "response_format.json_schema.schema"),
    (_json_schema({"type": "object", "properties": 3}), "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema"),
    ({"type": "xml"}, "response_format"),
])
def test_bad_response_format_is_a_400_naming_it(client, response_format, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tandem", messages=MESSAGES, response_format=response_format)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"
