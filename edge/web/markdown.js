"use strict";
// A small Markdown renderer that builds DOM nodes and never parses HTML: model output is
// text, always (no innerHTML anywhere), so `<script>` or `<img onerror=...>` shows as typed.
//
// The text comes in segments, each chosen by one source ("accepted", "cloud", "local", or
// none for the user's own words). Every piece of visible text is wrapped in a span naming its
// segment's source, and each segment's token count is written (data-tokens) on exactly one
// span, so the counts on the page add up to the stream's even where Markdown hides the
// characters (a fence, `**`): such a segment gets an empty span.
//
// Handles: fenced code blocks, headings, bullet and numbered lists, paragraphs, inline code,
// **bold** and *italic*. Anything else stays literal text.
(function () {
  const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
  const HEADING = /^(#{1,6})\s+/;
  const ITEM = /^\s*(?:([-*+])|(\d{1,9})[.)])\s+/;
  const INLINE = /(`+)([^`]+?)\1|\*\*(?=\S)([\s\S]+?)\*\*|\*(?=[^\s*])([^*]+?)\*/g;

  function render(container, segments) {
    const starts = [];
    let at = 0;
    for (const segment of segments) {
      starts.push(at);
      at += segment.text.length;
    }
    const ctx = {text: segments.map((s) => s.text).join(""), segments, starts,
                 counted: segments.map(() => false)};
    container.replaceChildren();
    blocks(ctx, container);
    segments.forEach((segment, i) => {
      if (!ctx.counted[i] && segment.tokens) container.append(span(ctx, i, ""));
    });
  }

  function el(tag) {
    return document.createElement(tag);
  }

  function span(ctx, i, text) {
    const segment = ctx.segments[i];
    const node = el("span");
    node.textContent = text;
    if (segment.source) node.className = "src src-" + segment.source;
    if (segment.title) node.title = segment.title;
    if (!ctx.counted[i] && segment.tokens) {
      node.dataset.source = segment.source;
      node.dataset.tokens = String(segment.tokens);
    }
    ctx.counted[i] = true;
    return node;
  }

  // Appends text[start:end] to parent, split where segments change.
  function emitText(ctx, parent, start, end) {
    let i = segmentAt(ctx, start);
    while (start < end) {
      while (ctx.starts[i] + ctx.segments[i].text.length <= start) i++;
      const stop = Math.min(end, ctx.starts[i] + ctx.segments[i].text.length);
      if (ctx.segments[i].source || ctx.segments[i].tokens) {
        parent.append(span(ctx, i, ctx.text.slice(start, stop)));
      } else {
        parent.append(document.createTextNode(ctx.text.slice(start, stop)));
        ctx.counted[i] = true;
      }
      start = stop;
    }
  }

  function segmentAt(ctx, offset) {
    let lo = 0, hi = ctx.starts.length - 1, found = 0;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (ctx.starts[mid] <= offset) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    return found;
  }

  function lines(text) {
    const out = [];
    let at = 0;
    for (const line of text.split("\n")) {
      out.push({start: at, end: at + line.length, text: line});
      at += line.length + 1;
    }
    return out;
  }

  function blocks(ctx, parent) {
    const all = lines(ctx.text);
    let i = 0;
    while (i < all.length) {
      const line = all[i];
      const fence = FENCE.exec(line.text);
      if (fence) {
        let j = i + 1;
        while (j < all.length && !FENCE.test(all[j].text)) j++;
        const pre = el("pre"), code = el("code");
        if (fence[2]) code.dataset.lang = fence[2];
        if (i + 1 < all.length) {
          const end = j < all.length ? all[j].start - 1 : ctx.text.length;  // an open fence: still streaming
          emitText(ctx, code, all[i + 1].start, Math.max(end, all[i + 1].start));
        }
        pre.append(code);
        parent.append(pre);
        i = j + 1;
        continue;
      }
      if (!line.text.trim()) { i++; continue; }
      const heading = HEADING.exec(line.text);
      if (heading) {
        const h = el(heading[1].length === 1 ? "h3" : "h4");
        inline(ctx, h, line.start + heading[0].length, line.end);
        parent.append(h);
        i++;
        continue;
      }
      const item = ITEM.exec(line.text);
      if (item) {
        const ordered = Boolean(item[2]);
        const list = el(ordered ? "ol" : "ul");
        if (ordered && item[2] !== "1") list.start = Number(item[2]);
        let next;
        while (i < all.length && (next = ITEM.exec(all[i].text)) && Boolean(next[2]) === ordered) {
          const li = el("li");
          inline(ctx, li, all[i].start + next[0].length, all[i].end);
          list.append(li);
          i++;
        }
        parent.append(list);
        continue;
      }
      let j = i + 1;
      while (j < all.length && all[j].text.trim() && !FENCE.test(all[j].text) && !HEADING.test(all[j].text)
             && !ITEM.test(all[j].text)) j++;
      const p = el("p");
      inline(ctx, p, line.start, all[j - 1].end);
      parent.append(p);
      i = j;
    }
  }

  function inline(ctx, parent, start, end) {
    const text = ctx.text.slice(start, end);
    const pattern = new RegExp(INLINE.source, "g");
    let last = 0, m;
    while ((m = pattern.exec(text))) {
      const at = start + m.index;
      emitText(ctx, parent, start + last, at);
      if (m[1]) {
        const code = el("code");
        emitText(ctx, code, at + m[1].length, at + m[1].length + m[2].length);
        parent.append(code);
      } else if (m[3] !== undefined) {
        const strong = el("strong");
        inline(ctx, strong, at + 2, at + 2 + m[3].length);
        parent.append(strong);
      } else {
        const em = el("em");
        inline(ctx, em, at + 1, at + 1 + m[4].length);
        parent.append(em);
      }
      last = m.index + m[0].length;
    }
    emitText(ctx, parent, start + last, end);
  }

  window.TandemMarkdown = {render};
})();
