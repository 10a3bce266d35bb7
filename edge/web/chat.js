"use strict";
// The chat page of `tandem serve`. It talks to the same OpenAI-compatible endpoint any client
// uses (POST /v1/chat/completions, streamed as Server-Sent Events) and reads the stream's
// extensions: `provenance` (who chose each token), `progress` (live counts), `degraded` and
// the last chunk's `tandem`. GET /health gives the cloud's state between answers.
// Offline-first: the page asks for `"offline": "rewind"`, so text the local model writes while the
// cloud is away arrives provisional; a `rewind` chunk cuts the answer back to a position (the cut
// text stays, struck through, with a tooltip) and `verified` repaints provisional text as exact. An
// answer that ended offline (`tandem.unverified_from`) is checked (POST /v1/tandem/verify) once the
// cloud is back, and before the next message is sent: the conversation goes on from exact text.
(function () {
  const $ = (id) => document.getElementById(id);
  const SETTINGS = ["temperature", "top-p", "max-tokens", "seed", "system-prompt"];
  const HEALTH_EVERY_MS = 1500;

  const chat = {
    history: [],  // [{role, content}] as sent to the API (the system prompt is added per request)
    answers: [],  // per assistant message: {segments, tokenIds, finish, degraded, tandem, error, stopped, check}
    controller: null,  // aborts the answer being streamed
    busy: false,
    checking: null,  // the check of unverified answers under way (a promise)
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
    const body = {model: "tandem", stream: true, messages: [], stream_options: {include_usage: false},
                  offline: "rewind", return_token_ids: true};
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
    if (answer.check) parts.push(answer.check);
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

  // Cuts the answer back to token r.to_token / character r.to_char; what was cut stays, struck through.
  function rewind(answer, r, title) {
    const kept = [];
    let removed = "", chars = 0, tokens = 0;
    for (const s of answer.segments) {
      if (s.source === "replaced") { kept.push(s); continue; }
      const keepChars = Math.max(0, Math.min(s.text.length, r.to_char - chars));
      const keepTokens = Math.max(0, Math.min(s.tokens, r.to_token - tokens));
      if (keepChars || keepTokens) kept.push({...s, text: s.text.slice(0, keepChars), tokens: keepTokens});
      removed += s.text.slice(keepChars);
      chars += s.text.length;
      tokens += s.tokens;
    }
    if (removed) kept.push({text: removed, source: "replaced", tokens: 0, title});
    answer.segments = kept;
    answer.tokenIds = answer.tokenIds.slice(0, r.to_token);
  }

  function markVerified(answer, upTo, source) {
    let tokens = 0;
    for (const s of answer.segments) {
      if (s.source === "provisional" && tokens + s.tokens <= upTo) s.source = source;
      tokens += s.tokens;
    }
  }

  function answerText(answer) {
    return answer.segments.filter((s) => s.source !== "replaced").map((s) => s.text).join("");
  }

  function applyChunk(answer, chunk) {
    if (chunk.rewind) {
      rewind(answer, chunk.rewind, "written by the local model while the cloud was away; the cloud model " +
                                   "rewrote the answer from here");
      return;
    }
    if (chunk.verified) {
      markVerified(answer, chunk.verified.to_token, chunk.verified.source);
      return;
    }
    const choice = (chunk.choices || [])[0];
    const text = (choice && choice.delta && choice.delta.content) || "";
    const runs = chunk.provenance || [];
    // A chunk's text is released by its last token; earlier runs (tokens that completed no
    // character yet) keep their counts in empty segments.
    runs.forEach((run, i) => answer.segments.push(
      {text: i === runs.length - 1 ? text : "", source: run.source, tokens: run.tokens}));
    if (!runs.length && text) answer.segments.push({text, source: null, tokens: 0});
    if (choice && choice.token_ids) answer.tokenIds.push(...choice.token_ids);
    answer.degraded = Boolean(chunk.degraded);
    if (chunk.degraded) showCloud("down");
    if (choice && choice.finish_reason) answer.finish = choice.finish_reason;
    if (chunk.tandem) answer.tandem = chunk.tandem;
    if (chunk.progress) showProgress(answer, chunk.progress);
    if (chunk.tandem) showProgress(answer, chunk.tandem.stats);
  }

  // Checks the answers that ended while the cloud was away (when it is back): an answer that differs
  // is cut where it does and the cloud model's answer follows; the conversation keeps that text.
  async function checkUnverified() {
    if (chat.checking) return chat.checking;
    chat.checking = verifyPending().finally(() => { chat.checking = null; });
    return chat.checking;
  }

  async function verifyPending() {
    for (const answer of chat.answers) {
      if (!answer.pending) continue;
      const {request, historyIndex, history} = answer.pending;
      let result;
      try {
        const response = await fetch("/v1/tandem/verify", {
          method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify({...request, stream: false, answer_token_ids: answer.tokenIds}),
        });
        if (!response.ok) return;  // the cloud is still away: try again later
        result = await response.json();
      } catch (error) {
        return;
      }
      answer.pending = null;
      if (result.exact) {
        markVerified(answer, answer.tokenIds.length, "accepted");
      } else {
        rewind(answer, {to_token: result.differs_at, to_char: result.differs_at_char},
               "written by the local model while the cloud was away; the cloud model's answer differs from here");
        answer.segments.push({text: result.text.slice(result.differs_at_char), source: "cloud",
                              tokens: result.token_ids.length - result.differs_at});
        answer.tokenIds = result.token_ids;
        history[historyIndex] = {role: "assistant", content: answerText(answer)};
      }
      answer.degraded = false;
      answer.check = result.state;
      renderAnswer(answer.article, answer);
    }
  }

  async function send(text) {
    await checkUnverified();  // the next turn goes on from the cloud model's text where it can
    const history = chat.history;  // "New chat" mid-answer starts another; this answer stays here
    const request = requestBody();
    history.push({role: "user", content: text});
    showUser(text);
    const article = addMessage("assistant");
    const answer = {segments: [], tokenIds: [], finish: null, degraded: false, tandem: null, error: null,
                    stopped: false, check: null, pending: null, article};
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
      const content = answerText(answer);
      if (content) history.push({role: "assistant", content});
      else if (!answer.finish) history.pop();  // nothing came back: forget the question too
      const unverified = answer.tandem && answer.tandem.unverified_from;
      if (content && unverified !== null && unverified !== undefined) {
        request.messages.push({role: "user", content: text});
        answer.pending = {request, historyIndex: history.length - 1, history};
        answer.check = "provisional: written by the local model while the cloud was away; checked when it is back";
      }
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
      if (state === "up" && !chat.busy) checkUnverified();
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
