"""The chat page at `tandem serve`'s `/`, in a real browser (headless chromium via selenium).

Properties, not texts: the page's answer is the API's answer for the same settings and seed;
the shaded spans declare as many accepted / cloud / local tokens as the stream's provenance and
stats count; stopping cancels the request on the server; a cloud killed mid-answer leaves a
completed answer marked degraded and the cloud's state reading down; model output that is
hostile HTML shows as text and runs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import chromium
from chat_page import ChatPage
from cloud_process import CloudProcess
from local_server import LocalServer
from selenium.webdriver.common.by import By

from bench.tiny_models import build_scripted_target, hf_to_gguf, smollm2_tokenizer_dir
from bench.relay import LinkConfig, RelayThread
from edge.chat_template import render_chat
from edge.fallback import FallbackConfig
from edge.provenance import Source

QUESTION = "Name three colours of the sea."
SETTINGS = dict(temperature=0.8, top_p=0.9, seed=1234, max_tokens=40, system="Answer briefly.")
# Hostile HTML that a scripted model says (spelt with distinct tokens: see distinct_tokens).
HOSTILE = '<script>pwn()</script><img src=x onerror="pwnToo()"/>'


@pytest.fixture(scope="module")
def driver():
    with chromium() as d:
        yield d


def api_request(question: str, temperature, max_tokens, system, top_p=1.0, seed=None) -> dict:
    return dict(model="tandem", messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
                temperature=temperature, top_p=top_p, seed=seed, max_tokens=max_tokens)


def stream_counts(client, request: dict) -> tuple[str, dict[str, int], dict]:
    """(text, tokens per source from the chunks' provenance, the last chunk's `tandem`) of a streamed answer."""
    text, counts, tandem = "", {source.value: 0 for source in Source}, None
    for chunk in client.chat.completions.create(stream=True, **request):
        text += chunk.choices[0].delta.content or ""
        for run in (chunk.model_extra.get("provenance") or []):
            counts[run["source"]] += run["tokens"]
        tandem = chunk.model_extra.get("tandem") or tandem
    return text, counts, tandem


def test_page_answer_is_the_apis_and_its_shading_counts_the_stream(driver, server, client, tmp_path):
    page = ChatPage(driver, server.page_url).open()
    assert driver.title == "Tandem chat"
    assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#legend .swatch")] == [
        "drafted locally, accepted by the cloud", "chosen by the cloud (first token, correction, bonus)",
        "local model alone: cloud unreachable", "local model while the cloud is away: checked when it is back",
        "replaced by the cloud model"]
    page.wait_cloud_state("up")
    page.settings(**SETTINGS)
    page.send(QUESTION)
    answer = page.wait_finished()
    history = page.history()
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == QUESTION

    request = api_request(QUESTION, **SETTINGS)
    whole = client.chat.completions.create(**request)
    assert history[1]["content"] == whole.choices[0].message.content  # same seed, same answer
    # The shading declares the counts of the stream the page received (which tokens a round
    # accepted depends on timing, so another run of the same answer may split them differently).
    tandem = driver.execute_script("return window.tandemChat.answers[0].tandem")
    shown = page.token_counts(answer)
    assert shown.get("accepted", 0) == tandem["provenance"]["accepted"] == tandem["stats"]["accepted"]
    assert shown.get("cloud", 0) == tandem["provenance"]["cloud"]
    assert shown["accepted"] + shown["cloud"] == tandem["stats"]["tokens"] == whole.usage.completion_tokens
    assert shown["accepted"] > 0 and shown["cloud"] > 0, "the noisy draft should see both accepts and rejections"
    assert "local" not in shown and tandem["provenance"]["local"] == 0

    # The live strip shows the answer's figures; shading can be turned off and on.
    assert float(page.find("#live-tps").text) > 0
    assert page.find("#live-acceptance").text.endswith("%") and page.find("#live-rtt").text.endswith("ms")
    assert float(page.find("#live-tpr").text) == pytest.approx(tandem["stats"]["tokens_per_round"], abs=0.01)
    assert page.find("#live-cloud").text == "up"
    span = answer.find_element(By.CSS_SELECTOR, "span.src-accepted")
    shaded = span.value_of_css_property("background-color")
    page.find("#shading").click()
    assert span.value_of_css_property("background-color") in ("rgba(0, 0, 0, 0)", "transparent") != shaded
    page.find("#shading").click()
    assert span.value_of_css_property("background-color") == shaded
    page.screenshot(tmp_path / "chat-page.png")

    # A follow-up sees the conversation; "New chat" forgets it.
    page.send("And one more?")
    page.wait_finished()
    assert [m["role"] for m in page.history()] == ["user", "assistant", "user", "assistant"]
    page.find("#new-chat").click()
    assert page.history() == [] and page.answers() == []


def test_stream_provenance_adds_up(client):
    """Every token of a streamed answer is in exactly one run of the chunks' `provenance`."""
    request = api_request(QUESTION, **SETTINGS)
    text, counts, tandem = stream_counts(client, request)
    assert counts == tandem["provenance"]
    assert counts["accepted"] == tandem["stats"]["accepted"]
    assert counts["accepted"] + counts["cloud"] == tandem["stats"]["tokens"]
    # at most one cloud-chosen token per round, besides the draft's guesses a decoding step confirmed
    assert counts["cloud"] <= tandem["stats"]["rounds"] + tandem["stats"]["hinted"]
    whole = client.chat.completions.create(**request)
    assert sum(whole.model_extra["tandem"]["provenance"].values()) == whole.usage.completion_tokens
    # A stop string cuts the answer's tokens; their sources are cut with them.
    text = whole.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert len(stop) == 3 and text.find(stop) > 0, f"answer too short for this test: {text!r}"
    cut = client.chat.completions.create(stop=[stop], **request)
    assert cut.choices[0].finish_reason == "stop"
    assert sum(cut.model_extra["tandem"]["provenance"].values()) == cut.usage.completion_tokens
    assert cut.usage.completion_tokens < whole.usage.completion_tokens


def test_stop_cancels_the_answer_on_the_server(driver, server, client):
    long_answer = dict(temperature=0, max_tokens=800, system="Answer at length.")
    probe = client.chat.completions.create(**{**api_request(QUESTION, **long_answer), "max_tokens": 200})
    assert probe.choices[0].finish_reason == "length", "this answer is too short to be stopped mid-way"
    before = server.health()["requests"]
    page = ChatPage(driver, server.page_url).open()
    page.settings(seed="", **long_answer)
    page.send(QUESTION)
    page.wait_tokens(5)
    page.find("#stop").click()
    answer = page.wait_finished()
    health = server.wait_for(lambda h: h["requests"]["active"] == 0, what="the stopped request to end")
    assert health["requests"]["cancelled"] == before["cancelled"] + 1
    assert health["requests"]["completed"] == before["completed"]
    assert "stopped" in answer.find_element(By.CSS_SELECTOR, ".meta").text
    assert sum(page.token_counts(answer).values()) < 800
    assert page.history()[-1]["role"] == "assistant"  # the part that arrived stays in the conversation


def test_cloud_killed_mid_answer_completes_degraded(driver, tiny_models, tiny_drafter):
    cloud = CloudProcess(tiny_models.target_dir, start_timeout_s=180.0).start()
    try:
        # A 20 ms link makes each cloud round take a while, so the kill lands mid-answer.
        with RelayThread(("127.0.0.1", cloud.port), LinkConfig(one_way_delay_s=0.02)) as relay, \
                LocalServer(tiny_drafter("noisy"), f"127.0.0.1:{relay.port}",
                            FallbackConfig(timeout_s=10.0, retry_min_s=0.2, retry_max_s=1.0)) as server:
            page = ChatPage(driver, server.page_url).open()
            page.wait_cloud_state("up")
            page.settings(temperature=0, max_tokens=400, seed="", system="Answer at length.")
            page.send(QUESTION)
            page.wait_tokens(8)
            cloud.kill()
            answer = page.wait_finished()
            assert answer.get_attribute("data-finished") == "true"  # completed, not failed
            assert "degraded" in answer.get_attribute("class").split()
            assert "degraded" in answer.find_element(By.CSS_SELECTOR, ".meta").text
            counts = page.token_counts(answer)
            # The page asks for offline "rewind": what the local model wrote is provisional (the cloud stays dead).
            assert counts.get("provisional", 0) > 0 and counts.get("accepted", 0) + counts.get("cloud", 0) >= 8
            page.wait_cloud_state("down")
            assert page.find("#live-cloud").text == "down"
            assert server.health()["requests"]["degraded"] == 1
    finally:
        cloud.stop()


@pytest.fixture(scope="module")
def scripted_server(tmp_path_factory, tiny_drafter):
    """A target (and its exact draft) whose answer to any chat is HOSTILE, then end of turn."""
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from cloud.model import LoadOptions, TargetModel
    from edge.llama_drafter import LlamaDrafter

    root = tmp_path_factory.mktemp("scripted")
    tokenizer = tiny_drafter("exact")
    prompt = tokenizer.tokenize(render_chat(tokenizer.chat_template, [{"role": "user", "content": "hi"}]))
    script = distinct_tokens(tokenizer, HOSTILE, avoid={prompt[-1], *tokenizer.eos_token_ids})
    target_dir = build_scripted_target(root / "target", smollm2_tokenizer_dir(root), prompt[-1], script,
                                       tokenizer.eos_token_ids[0])
    drafter = LlamaDrafter(hf_to_gguf(target_dir, root / "draft.gguf"), n_ctx=512, threads=1, f32_cache=True)
    target = TargetModel.load(str(target_dir), LoadOptions(device="cpu", threads=1))
    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0), model=target) as cloud, \
            LocalServer(drafter, cloud.address) as local:
        yield local
    drafter.close()


def distinct_tokens(drafter, text: str, avoid: set[int]) -> list[int]:
    """Token ids, each used once, whose bytes spell `text` (a scripted model needs distinct ids)."""
    pieces: dict[bytes, int] = {}
    for token in range(drafter.vocab_size):
        if token not in avoid:
            pieces.setdefault(drafter.token_bytes(token), token)
    target = text.encode()
    longest = max(len(p) for p in pieces)

    budget = [100_000]

    def search(at: int, used: set[int]) -> list[int] | None:
        if at == len(target):
            return []
        budget[0] -= 1
        if budget[0] < 0:
            return None
        for size in range(min(longest, len(target) - at), 0, -1):
            token = pieces.get(target[at:at + size])
            if token is not None and token not in used:
                rest = search(at + size, used | {token})
                if rest is not None:
                    return [token, *rest]
        return None

    found = search(0, set())
    assert found is not None, f"no segmentation of {text!r} into distinct tokens"
    return found


def test_hostile_model_output_is_rendered_as_text(driver, scripted_server):
    page = ChatPage(driver, scripted_server.page_url).open()
    driver.execute_script("window.pwn = window.pwnToo = () => { window.__pwned = true; };")
    page.settings(temperature=0, max_tokens=64)
    page.send("hi")
    answer = page.wait_finished()
    assert page.history()[-1]["content"] == HOSTILE  # the model really said it
    assert HOSTILE in answer.find_element(By.CSS_SELECTOR, ".body").text  # shown as typed
    assert answer.find_elements(By.CSS_SELECTOR, ".body script, .body img, .body [onerror]") == []
    assert driver.execute_script("return window.__pwned") is None  # neither pwn() nor pwnToo() ran
    assert page.token_counts(answer)["accepted"] > 0


@pytest.mark.slow
def test_screenshot_of_a_real_answer(driver, tmp_path):
    """The README's picture: the real default pair answering through the page.

    TANDEM_SCREENSHOT=docs/chat-page.png keeps it (the committed one came from this test).
    """
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from cloud.model import LoadOptions, TargetModel
    from edge.llama_drafter import LlamaDrafter
    from edge.speculation_config import SpeculationConfig

    target = TargetModel.load(None, LoadOptions(device="cpu", threads=1))
    drafter = LlamaDrafter(threads=1)
    try:
        with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0), model=target) as cloud, \
                LocalServer(drafter, cloud.address, speculation=SpeculationConfig()) as server:
            page = ChatPage(driver, server.page_url).open()
            page.wait_cloud_state("up")
            page.settings(temperature=0, max_tokens=200)
            page.send("Give me three tips for writing clear code.")
            answer = page.wait_finished(timeout=300)
            counts = page.token_counts(answer)
            assert counts.get("accepted", 0) > 0 and counts.get("cloud", 0) > 0
            path = Path(os.environ.get("TANDEM_SCREENSHOT") or tmp_path / "chat-page.png")
            page.screenshot(path)
            assert path.stat().st_size > 10_000
    finally:
        drafter.close()


def test_an_answer_written_offline_is_checked_on_the_page_when_the_cloud_is_back(driver, tiny_cloud, tiny_drafter,
                                                                                 client):
    """The cloud is away for a whole answer and back before the next turn: the answer shows as
    provisional, then the page has it checked: "verified exact", or "differs from position N" with
    the replaced text struck through (a tooltip says why) and the cloud model's answer after it,
    which the conversation keeps. Either way the text is then the API's answer for that request."""
    host, port = tiny_cloud.address.rsplit(":", 1)
    with RelayThread((host, int(port)), LinkConfig(one_way_delay_s=600.0)) as relay, \
            LocalServer(tiny_drafter("noisy"), f"127.0.0.1:{relay.port}",
                        FallbackConfig(timeout_s=1.0, retry_min_s=0.1, retry_max_s=0.5)) as server:
        page = ChatPage(driver, server.page_url).open()
        page.settings(temperature=0, max_tokens=30, seed="", system="Answer briefly.")
        page.send(QUESTION)
        answer = page.wait_finished()
        assert "provisional" in answer.find_element(By.CSS_SELECTOR, ".meta").text
        assert page.token_counts(answer).get("provisional", 0) > 0
        relay.set_config(LinkConfig())
        relay.drop_connections()
        page.wait_cloud_state("up")
        page.wait(lambda d: "verified exact" in answer.find_element(By.CSS_SELECTOR, ".meta").text
                  or "differs from position" in answer.find_element(By.CSS_SELECTOR, ".meta").text,
                  60, "the check of the offline answer")
        meta = answer.find_element(By.CSS_SELECTOR, ".meta").text
        replaced = answer.find_elements(By.CSS_SELECTOR, "span.src-replaced")
        assert bool(replaced) == ("differs from position" in meta)
        assert all("cloud model" in span.get_attribute("title") for span in replaced)
        assert page.token_counts(answer).get("provisional", 0) == 0
        assert "degraded" not in answer.get_attribute("class").split()
        expected = client.chat.completions.create(**api_request(QUESTION, 0, 30, "Answer briefly."))
        assert page.history()[-1] == {"role": "assistant", "content": expected.choices[0].message.content}
