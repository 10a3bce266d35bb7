"""The libraries people point at a local OpenAI-compatible server, unchanged, against `tandem serve`
(the real HTTP server, in-process, on the tiny models): instructor turning an answer into a pydantic
model, and langchain-openai's ChatOpenAI(...).with_structured_output(Model). Both send
response_format json_schema; the answer is the target's constrained greedy answer, and it parses."""

from __future__ import annotations

from typing import Literal

import openai
import pytest
from grammar_reference import hf_greedy_constrained
from pydantic import BaseModel, ConfigDict

from common.grammar import json_schema_grammar
from edge.chat_template import render_chat

instructor = pytest.importorskip("instructor")
langchain_openai = pytest.importorskip("langchain_openai")

MESSAGES = [{"role": "user", "content": "Is the sea blue? Answer in JSON."}]


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as strict schemas are
    answer: Literal["yes", "no", "maybe"]


def _expected_answer(target, drafter) -> Verdict:
    prompt = drafter.tokenize(render_chat(drafter.chat_template, MESSAGES))
    ids = hf_greedy_constrained(target, prompt, 32, json_schema_grammar(Verdict.model_json_schema()))
    return Verdict.model_validate_json(b"".join(target.token_bytes(t) for t in ids).decode())


def test_instructor_response_model(server, tiny_target, tiny_drafter):
    client = instructor.from_openai(openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0),
                                    mode=instructor.Mode.JSON_SCHEMA)
    verdict = client.chat.completions.create(model="tandem", response_model=Verdict, messages=MESSAGES,
                                             temperature=0, max_tokens=32, max_retries=0)
    assert isinstance(verdict, Verdict)
    assert verdict.model_dump() == _expected_answer(tiny_target, tiny_drafter("noisy")).model_dump()


def test_langchain_with_structured_output(server, tiny_target, tiny_drafter):
    llm = langchain_openai.ChatOpenAI(base_url=server.base_url, api_key="-", model="tandem", temperature=0,
                                      max_tokens=32, max_retries=0)
    verdict = llm.with_structured_output(Verdict, method="json_schema").invoke(
        [("user", MESSAGES[0]["content"])])
    assert isinstance(verdict, Verdict)
    assert verdict.model_dump() == _expected_answer(tiny_target, tiny_drafter("noisy")).model_dump()
