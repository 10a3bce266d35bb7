"""`tandem serve` while the cloud goes away mid-answer and comes back (edge/offline.py), driven by
the official openai client over a real cloud behind the link relay.

- `--offline hold`: nothing streamed is ever retracted: the text the client got is the decoding
  of the exact answer (the target's own greedy output), though the local model wrote tokens the
  target rewrote; and the answer completes.
- a request with `"offline": "rewind"`: provisional text is streamed, and a `rewind` extension
  event retracts it from the first token the target disagreed with; applying the events leaves
  the exact answer.
"""

from __future__ import annotations

import threading
import time

import openai
import pytest
from conftest import hf_greedy
from local_server import LocalServer

from bench.relay import LinkConfig, RelayThread
from common import channel
from edge.chat_template import render_chat
from edge.fallback import FallbackConfig
from edge.serve import ServeConfig

MESSAGES = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
MAX_TOKENS, CUT_AT = 400, 40


def heal_when_down(relay, server, done: threading.Event) -> threading.Thread:
    """Heals the link as soon as the edge has marked the cloud down (the local model is writing)."""
    def run():
        deadline = time.monotonic() + 60
        while server.engine.cloud.state.value != "down" and time.monotonic() < deadline and not done.is_set():
            time.sleep(0.01)
        relay.set_config(LinkConfig())
        relay.drop_connections()  # the silent connections die; the probe dials again
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _answer_through_a_cut(tiny_cloud, drafter, offline: str):
    """One streamed answer whose link goes silent after CUT_AT tokens and heals once the edge marked
    the cloud down: (metrics after it, its final chunk, ids, text, rewinds)."""
    host, port = tiny_cloud.address.rsplit(":", 1)
    fallback = FallbackConfig(timeout_s=1.0, retry_min_s=0.05, retry_max_s=0.2)
    config = ServeConfig(port=0, offline="hold") if offline == "hold" else ServeConfig(port=0)
    extra = {"return_token_ids": True} | ({"offline": "rewind"} if offline == "rewind" else {})
    with RelayThread((host, int(port))) as relay, \
            LocalServer(drafter, f"127.0.0.1:{relay.port}", fallback, config=config) as server, \
            openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=120) as client:
        done, healer = threading.Event(), None
        text, ids, rewinds, final = "", [], [], None
        stream = client.chat.completions.create(model="tandem", messages=MESSAGES, temperature=0,
                                                max_tokens=MAX_TOKENS, stream=True, extra_body=extra)
        for chunk in stream:
            extension = chunk.model_extra or {}
            if "rewind" in extension:
                rewinds.append((extension["rewind"], list(ids)))
                text, ids = text[:extension["rewind"]["to_char"]], ids[:extension["rewind"]["to_token"]]
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                ids += chunk.choices[0].model_extra.get("token_ids", [])
            if "tandem" in extension:
                final = chunk
            if healer is None and len(ids) >= CUT_AT:
                relay.set_config(LinkConfig(one_way_delay_s=600.0))  # silent: nothing errors, nothing arrives
                relay.drop_connections()
                healer = heal_when_down(relay, server, done)
        done.set()
        # The server records an answer once its response is written: the client may see [DONE] first.
        deadline = time.monotonic() + 10
        while (metrics := server.metrics()).get(("tandem_edge_requests_total", (("outcome", "completed"),)), 0) < 1 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    return metrics, final, ids, text, rewinds


@pytest.mark.parametrize("offline", ["hold", "rewind"])
def test_cloud_away_mid_answer_ends_exact(tiny_cloud, tiny_target, tiny_drafter, offline, monkeypatch):
    drafter = tiny_drafter("noisy")
    prompt_ids = drafter.tokenize(render_chat(drafter.chat_template, MESSAGES))
    # The property needs the cloud back before the fast tiny local model has written the whole answer
    # (a fraction of a second). The product's reconnect backoff (0.5 to 3 s, for a restarting cloud)
    # would make that a race with the machine's load, so this edge redials every 20 to 100 ms; the
    # scenario is still arranged again if the local model won anyway.
    monkeypatch.setattr(channel, "RECONNECT_OPTIONS", [("grpc.initial_reconnect_backoff_ms", 20),
                                                       ("grpc.min_reconnect_backoff_ms", 20),
                                                       ("grpc.max_reconnect_backoff_ms", 100)])
    for _ in range(5):
        metrics, final, ids, text, rewinds = _answer_through_a_cut(tiny_cloud, drafter, offline)
        if final.tandem["stats"]["reconnects_in_answer"]:
            break
    provisional = {outcome: metrics[("tandem_edge_provisional_tokens_total", (("outcome", outcome),))]
                   for outcome in ("written", "accepted", "rewritten")}
    assert metrics[("tandem_edge_verification_seconds_count", ())] == 1
    assert metrics[("tandem_edge_rewinds_total", ())] == len(rewinds) or offline == "hold"
    stats = final.tandem["stats"]
    assert stats["reconnects_in_answer"] >= 1, stats  # the cloud was away mid-answer and came back
    assert stats["provisional"] > 0 and stats["provisional_rewritten"] > 0, stats  # something to retract
    assert provisional == {"written": stats["provisional"], "accepted": stats["provisional_accepted"],
                           "rewritten": stats["provisional_rewritten"]}
    assert stats["provisional_accepted"] + stats["provisional_rewritten"] == stats["provisional"]
    assert final.choices[0].finish_reason in ("stop", "length") and final.degraded is False
    assert ids == hf_greedy(tiny_target, prompt_ids, MAX_TOKENS)[: len(ids)] and len(ids) == stats["tokens"]
    assert text == b"".join(drafter.token_bytes(t) for t in ids).decode("utf-8", errors="replace")
    if offline == "hold":
        assert rewinds == []  # nothing streamed was retracted
    else:
        assert len(rewinds) == stats["rewinds"] >= 1
        event, shown = rewinds[0]
        assert shown[event["to_token"]] != ids[event["to_token"]]  # the first token the target disagreed with
        assert shown[:event["to_token"]] == ids[:event["to_token"]]
