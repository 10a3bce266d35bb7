"use strict";
// The chat page of `tandem serve`. It talks to the same OpenAI-compatible endpoint any client
// uses (POST /v1/chat/completions, streamed as Server-Sent Events) and reads the stream's
// extensions: `provenance` (who chose each token), `progress` (live counts), `degraded` and
// the last chunk's `tandem`. GET /health gives the cloud's state between answers.
(function () {
  const $ = (id) => document.getElementById(id);
  const SETTINGS = ["temperature", "top-p", "max-tokens", "seed", "system-prompt"];
  const HEALTH_EVERY_MS = 1500;

  const chat = {
    history: [],  // [{role, content}] as sent to the API (the system prompt is added per request)
    answers: [],  // per assistant message: {segments, finish, degraded, tandem, error, stopped}
    controller: null,  // aborts the answer being streamed
    busy: false,
  };
  window.tandemChat = chat;  // for the curious (and the browser test): the conversation so far

  // -- settings ------------------------------------------------------------------------------

  function loadSettings() {
    for (const id of SETTINGS) {
      const saved = localStorage.getItem("tandem." + id);
      if (saved !== null) $(id).value = saved;
      $(id).addEventListener("change", () => localStorage.setItem("tandem." + id, $(id).value));
    }
  }

  function requestBody() {
    const body = {model: "tandem", stream: true, messages: [], stream_options: {include_usage: false}};
    const system = $("system-prompt").value.trim();
    if (system) body.messages.push({role: "system", content: system});
    body.messages.push(...chat.history);
    const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
    if (number("temperature") !== null) body.temperature = number("temperature");
    if (number("top-p") !== null) body.top_p = number("top-p");
    if (number("max-tokens") !== null) body.max_tokens = number("max-tokens");
    if (number("seed") !== null) body.seed = number("seed");
    return body;
  }

  // -- messages ------------------------------------------------------------------------------

  function addMessage(role) {
    const article = document.createElement("article");
    article.className = "msg " + role;
    const body = document.createElement("div");
    body.className = "body";
    const meta = document.createElement("div");
    meta.className = "meta";
    article.append(body, meta);
    $("messages").append(article);
    return article;
  }

  function showUser(text) {
    const article = addMessage("user");
    TandemMarkdown.render(article.querySelector(".body"), [{text, source: null, tokens: 0}]);
    scrollDown();
  }

  function renderAnswer(article, answer) {
    TandemMarkdown.render(article.querySelector(".body"), answer.segments);
    article.classList.toggle("degraded", answer.degraded);
    article.dataset.finished = answer.finish ? "true" : "false";
    const parts = [];
    if (answer.degraded) {
      const at = answer.tandem && answer.tandem.fallback_at;
      parts.push(at ? `degraded: the local model wrote on alone from token ${at}` :
                 "degraded: the cloud was unreachable, so the local model answered alone");
    }
    if (answer.tandem) {
      const s = answer.tandem.stats;
      parts.push(`${answer.tandem.answered_by} · ${s.tokens} tokens · ${s.tokens_per_s.toFixed(1)} tok/s`);
    }
    if (answer.stopped) parts.push("stopped");
    if (answer.error) parts.push("error: " + answer.error);
    const meta = article.querySelector(".meta");
    meta.textContent = parts.join(" — ");
    meta.classList.toggle("error", Boolean(answer.error));
    scrollDown();
  }

  function scrollDown() {
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }

  // -- streaming -----------------------------------------------------------------------------

  function applyChunk(answer, chunk) {
    const choice = (chunk.choices || [])[0];
    const text = (choice && choice.delta && choice.delta.content) || "";
    const runs = chunk.provenance || [];
    // A chunk's text is released by its last token; earlier runs (tokens that completed no
    // character yet) keep their counts in empty segments.
    runs.forEach((run, i) => answer.segments.push(
      {text: i === runs.length - 1 ? text : "", source: run.source, tokens: run.tokens}));
    if (!runs.length && text) answer.segments.push({text, source: null, tokens: 0});
    answer.degraded = answer.degraded || Boolean(chunk.degraded);
    if (chunk.degraded) showCloud("down");
    if (choice && choice.finish_reason) answer.finish = choice.finish_reason;
    if (chunk.tandem) answer.tandem = chunk.tandem;
    if (chunk.progress) showProgress(answer, chunk.progress);
    if (chunk.tandem) showProgress(answer, chunk.tandem.stats);
  }

  async function send(text) {
    const history = chat.history;  // "New chat" mid-answer starts another; this answer stays here
    history.push({role: "user", content: text});
    showUser(text);
    const article = addMessage("assistant");
    const answer = {segments: [], finish: null, degraded: false, tandem: null, error: null, stopped: false};
    chat.answers.push(answer);
    const controller = new AbortController();
    chat.controller = controller;
    setBusy(true);
    renderAnswer(article, answer);
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify(requestBody()), signal: controller.signal,
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
      }
      for await (const chunk of events(response)) {
        if (chunk.error) throw new Error(chunk.error.message);
        applyChunk(answer, chunk);
        renderAnswer(article, answer);
      }
    } catch (error) {
      if (error.name === "AbortError") answer.stopped = true;
      else answer.error = error.message;
    } finally {
      const content = answer.segments.map((s) => s.text).join("");
      if (content) history.push({role: "assistant", content});
      else if (!answer.finish) history.pop();  // nothing came back: forget the question too
      if (chat.controller === controller) chat.controller = null;
      renderAnswer(article, answer);
      setBusy(false);
      pollHealth();
    }
  }

  // Server-Sent Events from a fetch body: `data: {json}` blocks, ended by `data: [DONE]`.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data === "[DONE]") return;
        if (data) yield JSON.parse(data);
      }
    }
  }

  function setBusy(busy) {
    chat.busy = busy;
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    document.body.dataset.busy = busy ? "true" : "false";
  }

  // -- the live strip and the cloud's state --------------------------------------------------

  function showProgress(answer, p) {
    const byCloud = answer.segments.filter((s) => s.source === "accepted" || s.source === "cloud")
      .reduce((n, s) => n + s.tokens, 0);
    $("live-tps").textContent = p.elapsed_s > 0 ? (p.tokens / p.elapsed_s).toFixed(1) : "–";
    $("live-tpr").textContent = p.rounds ? (byCloud / p.rounds).toFixed(2) : "–";
    $("live-acceptance").textContent = p.drafted ? `${Math.round(100 * p.accepted / p.drafted)}%` : "–";
    const rtt = p.round_trip_ms !== undefined ? p.round_trip_ms : (p.policy || {}).round_trip_ms;
    $("live-rtt").textContent = rtt ? `${Math.round(rtt)} ms` : "–";
  }

  function showCloud(state, detail) {
    const label = {up: "up", down: "down", reconnecting: "reconnecting", unknown: "connecting",
                   none: "off (local only)"}[state] || state;
    const pill = $("cloud-state");
    pill.dataset.state = state;
    pill.textContent = "cloud: " + label;
    pill.title = detail || "the cloud model's connection";
    $("live-cloud").textContent = label;
    $("live-cloud").dataset.state = state;
  }

  async function pollHealth() {
    try {
      const response = await fetch("/health", {cache: "no-store"});
      if (!response.ok) return;
      const cloud = (await response.json()).cloud || {};
      // Lost, and the first reconnect attempt still running: reconnecting. Once one failed: down.
      const state = cloud.state === "down" && cloud.failed_reconnects === 0 ? "reconnecting" : cloud.state;
      showCloud(state || "unknown", cloud.last_error || "");
    } catch (error) {
      showCloud("unknown", "tandem serve is not answering");
    }
  }

  // -- wiring --------------------------------------------------------------------------------

  function newChat() {
    if (chat.controller) chat.controller.abort();
    chat.history = [];
    chat.answers = [];
    $("messages").replaceChildren();
    $("prompt").focus();
  }

  document.addEventListener("DOMContentLoaded", () => {
    loadSettings();
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = $("prompt").value.trim();
      if (!text || chat.busy) return;
      $("prompt").value = "";
      send(text);
    });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("stop").addEventListener("click", () => chat.controller && chat.controller.abort());
    $("new-chat").addEventListener("click", newChat);
    $("shading").addEventListener("change", () => document.body.classList.toggle("no-shading", !$("shading").checked));
    $("settings-button").addEventListener("click", () => {
      $("settings").hidden = !$("settings").hidden;
      $("settings-button").setAttribute("aria-expanded", String(!$("settings").hidden));
    });
    $("settings").addEventListener("submit", (event) => event.preventDefault());
    setBusy(false);
    pollHealth();
    setInterval(pollHealth, HEALTH_EVERY_MS);
    $("prompt").focus();
  });
})();
