"""`logprobs` / `top_logprobs` on `tandem serve`, through the official openai client: the values are
the target's log-probabilities at each answer token (a transformers forward pass over prompt +
answer), one entry per token, streamed and not, and only when asked for."""

from __future__ import annotations

import numpy as np
import openai
import pytest
from test_logprobs import reference_logits

from common.sampling import served_logprobs
from edge.chat_template import render_chat

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def _expected(target, prompt, ids):
    rows = reference_logits(target, prompt + ids)[len(prompt) - 1: len(prompt) - 1 + len(ids)]
    return [served_logprobs(row, 0.0) for row in rows]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_are_the_targets(client, tiny_target, tiny_drafter, stream):
    drafter = tiny_drafter("noisy")
    args = dict(model="tandem", messages=MESSAGES, temperature=0, max_tokens=12, logprobs=True, top_logprobs=5,
                extra_body={"return_token_ids": True})
    if stream:
        ids, entries = [], []
        for chunk in client.chat.completions.create(stream=True, **args):
            choice = chunk.choices[0]
            ids += (choice.model_extra or {}).get("token_ids") or []
            entries += choice.logprobs.content if choice.logprobs else []
    else:
        choice = client.chat.completions.create(**args).choices[0]
        ids, entries = choice.model_extra["token_ids"], choice.logprobs.content
    prompt = drafter.tokenize(render_chat(drafter.chat_template, MESSAGES))
    assert len(entries) == len(ids) > 0
    for token, entry, expected in zip(ids, entries, _expected(tiny_target, prompt, ids)):
        assert bytes(entry.bytes) == tiny_target.token_bytes(token)
        assert entry.logprob == pytest.approx(expected[token], abs=2e-3)
        assert len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0].logprob == pytest.approx(expected.max(), abs=2e-3)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)


def test_completions_logprobs(client, tiny_target, tiny_drafter):
    prompt = "The sea is"
    response = client.completions.create(model="tandem", prompt=prompt, temperature=0, max_tokens=8, logprobs=3,
                                         extra_body={"return_token_ids": True})
    choice = response.choices[0]
    ids = choice.model_extra["token_ids"]
    expected = _expected(tiny_target, tiny_drafter("noisy").tokenize(prompt), ids)
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == len(ids)
    assert np.allclose(choice.logprobs.token_logprobs, [e[t] for t, e in zip(ids, expected)], atol=2e-3)
    assert all(len(top) <= 3 for top in choice.logprobs.top_logprobs)
    assert choice.logprobs.text_offset[0] == 0 and "".join(choice.logprobs.tokens) == choice.text


def test_no_logprobs_unless_asked(client):
    choice = client.chat.completions.create(model="tandem", messages=MESSAGES, temperature=0, max_tokens=4).choices[0]
    assert choice.logprobs is None


@pytest.mark.parametrize("extra,param", [
    (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
    (dict(top_logprobs=3), "top_logprobs"),
    (dict(logprobs="yes"), "logprobs"),
])
def test_bad_logprobs_are_400s(client, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tandem", messages=MESSAGES, **extra)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param
