"""`tandem serve` through the official openai client: the real server on a loopback port.

Answers are checked as properties: greedy answers are the target's own greedy tokens (from
transformers' generate), text is exactly the decoding of those tokens, usage counts the ids,
stop strings cut where the text says, and a client that hangs up leaves nothing behind.
"""

from __future__ import annotations

import re
import time

import openai
import pytest
from conftest import hf_greedy
from serve_process import serve_process

from edge.chat_template import render_chat

MESSAGES = [{"role": "user", "content": "Name three colours of the sea."}]
MAX_TOKENS = 24


def decode(drafter, ids: list[int]) -> str:
    return b"".join(drafter.token_bytes(t) for t in ids).decode("utf-8", errors="replace")


def chat_prompt(drafter, messages) -> list[int]:
    return drafter.tokenize(render_chat(drafter.chat_template, messages))


def assert_is_target_answer(target, prompt_ids, ids, finish_reason, max_tokens):
    """ids are the target's greedy answer, cut only by max_tokens or an end-of-sequence token."""
    expected = hf_greedy(target, prompt_ids, max_tokens)
    assert ids == expected[: len(ids)]
    if finish_reason == "length":
        assert len(ids) == max_tokens
    else:
        assert finish_reason == "stop" and ids[-1] in target.eos_token_ids


def test_chat_non_streamed_is_the_targets_answer(server, client, tiny_target, tiny_drafter):
    raw = client.chat.completions.with_raw_response.create(
        model="tandem", messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS,
        extra_body={"return_token_ids": True})
    response = raw.parse()
    choice = response.choices[0]
    prompt_ids = chat_prompt(tiny_drafter("noisy"), MESSAGES)
    ids = choice.model_extra["token_ids"]
    assert response.prompt_token_ids == prompt_ids
    assert_is_target_answer(tiny_target, prompt_ids, ids, choice.finish_reason, MAX_TOKENS)
    assert choice.message.role == "assistant"
    assert choice.message.content == decode(tiny_drafter("noisy"), ids)
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == len(ids)
    assert response.usage.total_tokens == len(prompt_ids) + len(ids)
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert response.degraded is False and response.tandem["answered_by"] == "hybrid"
    assert raw.headers["X-Tandem-Degraded"] == "false"
    assert response.tandem["stats"]["rounds"] >= 1


def test_metrics_count_what_the_answers_say(server, client):
    before = server.metrics()
    responses = [client.chat.completions.create(model="tandem", messages=[{"role": "user", "content": text}],
                                                temperature=0, max_tokens=MAX_TOKENS)
                 for text in ("Hello!", "Count to five.")]
    after = server.metrics()

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    stats = [r.tandem["stats"] for r in responses]
    assert grew("tandem_edge_requests_total", outcome="completed") == 2
    assert grew("tandem_edge_draft_tokens_total") == sum(s["drafted"] for s in stats)
    assert grew("tandem_edge_accepted_tokens_total") == sum(s["accepted"] for s in stats)
    assert grew("tandem_edge_generated_tokens_total", source="hybrid") == sum(r.usage.completion_tokens
                                                                             for r in responses)
    # One round trip per verified block: every round but the first token and the cloud's decoding steps
    # (each commits one token of its own and any guesses it confirmed).
    blocks = sum(s["rounds"] - 1 - (s["cloud_decoded"] - s["hinted"]) for s in stats)
    assert grew("tandem_edge_cloud_round_trip_seconds_count") == blocks
    assert grew("tandem_edge_fallbacks_total", at="start") == grew("tandem_edge_degraded_answers_total") == 0


def test_chat_streamed_matches_non_streamed(server, client, tiny_target, tiny_drafter):
    whole = client.chat.completions.create(model="tandem", messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS)
    stream = client.chat.completions.create(
        model="tandem", messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True}, extra_body={"return_token_ids": True})
    chunks = list(stream)
    *answer, usage_chunk = chunks
    assert answer[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == answer[0].id for c in chunks)
    assert all(c.choices[0].finish_reason is None for c in answer[:-1])
    assert answer[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    text = "".join(c.choices[0].delta.content or "" for c in answer)
    ids = [t for c in answer for t in c.choices[0].model_extra.get("token_ids", [])]
    assert text == whole.choices[0].message.content == decode(tiny_drafter("noisy"), ids)
    prompt_ids = chat_prompt(tiny_drafter("noisy"), MESSAGES)
    assert_is_target_answer(tiny_target, prompt_ids, ids, whole.choices[0].finish_reason, MAX_TOKENS)
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == len(ids) == whole.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == len(prompt_ids)
    assert all(c.degraded is False for c in chunks)
    assert answer[-1].tandem["answered_by"] == "hybrid"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_cut_the_answer(server, client, tiny_drafter, stream):
    full = client.chat.completions.create(model="tandem", messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS,
                                          extra_body={"return_token_ids": True})
    full_text, full_ids = full.choices[0].message.content, full.choices[0].model_extra["token_ids"]
    stop = full_text[len(full_text) // 2: len(full_text) // 2 + 3]
    cut = full_text.find(stop)
    assert len(stop) == 3 and cut > 0, f"answer too short for this test: {full_text!r}"
    kwargs = dict(model="tandem", messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS,
                  stop=[stop, "never appears \x00"], extra_body={"return_token_ids": True})
    if stream:
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
        ids = [t for c in chunks[:-1] for t in c.choices[0].model_extra.get("token_ids", [])]
        finish, usage = chunks[-2].choices[0].finish_reason, chunks[-1].usage
    else:
        response = client.chat.completions.create(**kwargs)
        text, ids = response.choices[0].message.content, response.choices[0].model_extra["token_ids"]
        finish, usage = response.choices[0].finish_reason, response.usage
    assert text == full_text[:cut]
    assert finish == "stop"
    # The answer's tokens run up to the one that completed the stop string, no further.
    assert ids == full_ids[: len(ids)]
    drafter = tiny_drafter("noisy")
    assert stop in decode(drafter, ids) and stop not in decode(drafter, ids[:-1])
    assert usage.completion_tokens == len(ids)


def test_completions_endpoint(server, client, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = "The quick brown fox"
    by_text = client.completions.create(model="tandem", prompt=prompt, temperature=0, max_tokens=12,
                                        extra_body={"return_token_ids": True})
    prompt_ids = drafter.tokenize(prompt)
    ids = by_text.choices[0].model_extra["token_ids"]
    assert by_text.object == "text_completion"
    assert_is_target_answer(tiny_target, prompt_ids, ids, by_text.choices[0].finish_reason, 12)
    assert by_text.choices[0].text == decode(drafter, ids)
    assert by_text.usage.prompt_tokens == len(prompt_ids) and by_text.usage.completion_tokens == len(ids)
    by_ids = client.completions.create(model="tandem", prompt=prompt_ids, temperature=0, max_tokens=12)
    assert by_ids.choices[0].text == by_text.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tandem", prompt=prompt, temperature=0, max_tokens=12, stream=True))
    assert streamed == by_text.choices[0].text


def test_sampling_parameters_pass_through(server, client):
    """A seed (0 included) fixes a sampled answer; temperature, top_p and the seed reach the engine."""
    kwargs = dict(model="tandem", messages=MESSAGES, temperature=0.9, top_p=0.8, max_tokens=16,
                  extra_body={"return_token_ids": True})
    first = client.chat.completions.create(seed=0, **kwargs)
    again = client.chat.completions.create(seed=0, **kwargs)
    others = [client.chat.completions.create(seed=seed, **kwargs) for seed in (8, 9, 10)]
    ids = [r.choices[0].model_extra["token_ids"] for r in (first, again, *others)]
    assert ids[0] == ids[1]
    assert any(other != ids[0] for other in ids[2:])


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tandem"]
    assert client.models.retrieve("tandem").id == "tandem"
    health = server.health()
    assert health["status"] == "ok" and health["cloud"]["state"] == "up" and health["fallback"] is False


@pytest.mark.parametrize("body,param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": MESSAGES, "temperature": 5}, "temperature"),
    ({"messages": MESSAGES, "top_p": 0}, "top_p"),
    ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({"messages": MESSAGES, "n": 9}, "n"),  # above the stated limit (edge.openai_api.MAX_CHOICES)
    ({"messages": MESSAGES, "stop": [""]}, "stop"),
    ({"messages": MESSAGES, "seed": "x"}, "seed"),
    ({"messages": MESSAGES, "stream": "yes"}, "stream"),
])
def test_bad_requests_get_openai_errors(server, client, body, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tandem", **body)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"


def test_malformed_http_gets_json_errors(server):
    status, _, body = server.http("POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]
    status, _, body = server.http("POST", "/v1/completions", b'{"prompt": [99999999]}')
    assert status == 400 and body["error"]["param"] == "prompt"
    status, _, body = server.http("GET", "/v1/nowhere")
    assert status == 404 and body["error"]["message"]
    status, _, body = server.http("GET", "/v1/chat/completions")
    assert status == 405 and body["error"]["message"]


def test_disconnect_mid_stream_cancels_and_leaks_nothing(server, client, tiny_cloud, tiny_target, tiny_drafter):
    before = server.health()["requests"]
    stream = client.chat.completions.create(model="tandem", messages=MESSAGES, temperature=0, max_tokens=800,
                                            stream=True)
    received = [next(stream), next(stream)]
    assert received[0].choices[0].finish_reason is None
    stream.close()  # hang up mid-answer
    health = server.wait_for(lambda h: h["requests"]["active"] == 0, what="the cancelled request to end")
    assert health["requests"]["cancelled"] == before["cancelled"] + 1
    assert health["requests"]["completed"] == before["completed"]
    deadline = time.monotonic() + 10
    while tiny_cloud.live_sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tiny_cloud.live_sessions == 0, "the cloud still holds the abandoned session"
    # Still healthy, still exact.
    after = client.chat.completions.create(model="tandem", messages=MESSAGES, temperature=0, max_tokens=8,
                                           extra_body={"return_token_ids": True})
    prompt_ids = chat_prompt(tiny_drafter("noisy"), MESSAGES)
    assert_is_target_answer(tiny_target, prompt_ids, after.choices[0].model_extra["token_ids"],
                            after.choices[0].finish_reason, 8)


def test_tandem_serve_command(tiny_cloud, tiny_models):
    """The real command: binds loopback, prints a ready line, answers the openai client, stops on SIGTERM."""
    with serve_process(tiny_cloud.address, tiny_models.drafts["exact"]) as (base_url, ready):
        assert re.match(r"tandem serve ready: \S+ model=tandem mode=hybrid cloud=up", ready), ready
        with openai.OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=60) as c:
            answer = c.chat.completions.create(model="any-name", messages=MESSAGES, max_tokens=4, temperature=0)
            streamed = list(c.chat.completions.create(model="any-name", messages=MESSAGES, max_tokens=4,
                                                      temperature=0, stream=True))
        assert answer.usage.completion_tokens >= 1 and answer.degraded is False
        assert "".join(s.choices[0].delta.content or "" for s in streamed) == answer.choices[0].message.content
