"""The report: how well, and how fast, each draft would serve the target on held-out prompts.

For every draft (the untrained student, the distilled one, and the project's default draft when
it can draft for the target), measured side by side in one run, in llama.cpp as the edge runs it
(a draft of another vocabulary through the edge's CrossVocabDrafter, so "the draft's token" below
is the target id it proposes by string-level exact match):

- acceptance: at every position of the target's greedy continuation of a held-out prompt, does
  the draft's greedy token equal the target's? (α of distill/figures.py);
- mean accepted length: greedy speculative decoding replayed against that continuation with
  blocks of `draft_tokens` drafts: drafts accepted per round;
- draft tokens/s: one-token decode steps on one llama.cpp thread (best of three passes,
  interleaved between drafts, so background load hurts every draft alike);
- predicted speedup over the target alone, from α and draft time ÷ target time per token
  (the target timed on one torch thread in the same run).

`tandem bench --draft-model DIR/draft.gguf` measures the real hybrid speed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from distill.figures import accepted_prefix, predicted_speedup
from distill.models import decode_seconds, generate
from edge.llama_drafter import LlamaDrafter

SPEED_PASSES = 3
SPEED_TOKENS = 48


@dataclass
class DraftFigures:
    draft: str  # "untrained", "distilled", "default"
    path: str
    weights: str  # f32, f16, q8_0, q4_k_m, or the file's own
    size_mb: float
    acceptance: float
    mean_accepted_length: float
    tokens_per_round: float
    draft_tokens_per_s: float
    predicted_speedup: float
    best_draft_tokens: int


def reference_continuations(teacher, prompts: list[list[int]], new_tokens: int, batch: int = 8) -> list[list[int]]:
    """The target's greedy continuation of every prompt (what greedy hybrid output must equal)."""
    stop = set(teacher.eos_token_ids)
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        out += generate(teacher.model, chunk, new_tokens, 0.0, [0] * len(chunk), stop)
    return out


def target_seconds_per_token(teacher, prompt: list[int], steps: int = 16) -> float:
    """One-token forward passes of the target on a KV cache, on one torch thread (best of three)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return min(decode_seconds(teacher.model, prompt, steps) for _ in range(SPEED_PASSES))
    finally:
        torch.set_num_threads(threads)


def acceptance(drafter: LlamaDrafter, prompts: list[list[int]], references: list[list[int]]) -> float:
    agree = total = 0
    for prompt, reference in zip(prompts, references):
        for pos, wanted in enumerate(reference):
            agree += int(np.argmax(drafter.next_logits(prompt + reference[:pos]))) == wanted
            total += 1
    return agree / max(total, 1)


def accepted_lengths(drafter: LlamaDrafter, prompts: list[list[int]], references: list[list[int]],
                     draft_tokens: int) -> tuple[float, float]:
    """(drafts accepted per round, tokens committed per round) of greedy speculation replayed."""
    accepted = rounds = committed = 0
    for prompt, reference in zip(prompts, references):
        pos = 0
        while pos < len(reference):
            wanted = reference[pos:pos + draft_tokens]
            drafts: list[int] = []
            while len(drafts) < len(wanted) and drafts == wanted[: len(drafts)]:
                drafts.append(int(np.argmax(drafter.next_logits(prompt + reference[:pos] + drafts))))
            a = accepted_prefix(drafts, wanted)
            step = min(a + 1, len(reference) - pos)  # the accepted drafts and the target's own token
            accepted, rounds, committed, pos = accepted + a, rounds + 1, committed + step, pos + step
    return accepted / max(rounds, 1), committed / max(rounds, 1)


def _decode_seconds(drafter: LlamaDrafter, prompt: list[int]) -> float:
    context = list(prompt)
    logits = drafter.start(context)
    started = time.perf_counter()
    for _ in range(SPEED_TOKENS):
        context.append(int(np.argmax(logits)))
        logits = drafter.next_logits(context)
    return (time.perf_counter() - started) / SPEED_TOKENS


def evaluate_drafts(drafts: dict[str, tuple[Path, str]], teacher, prompts: list[list[int]],
                    references: list[list[int]], draft_tokens: int,
                    progress=print, open_draft=None) -> tuple[list[DraftFigures], float]:
    """(figures for each named draft (name -> (GGUF path, weight type)), target seconds per token),
    measured in one run. open_draft(path, n_ctx): the draft engine in the target's ids (default: a
    one-thread LlamaDrafter; distill/report.py wraps a draft of another vocabulary as the edge does)."""
    open_draft = open_draft or (lambda path, n_ctx: LlamaDrafter(path, n_ctx=n_ctx, threads=1))
    target_s = target_seconds_per_token(teacher, prompts[0] + references[0][:8])
    n_ctx = max(len(p) + len(r) for p, r in zip(prompts, references)) + draft_tokens + SPEED_TOKENS + 8
    drafters = {name: open_draft(path, n_ctx) for name, (path, _) in drafts.items()}
    try:
        speed = {name: float("inf") for name in drafts}
        for _ in range(SPEED_PASSES):
            for name, drafter in drafters.items():
                speed[name] = min(speed[name], _decode_seconds(drafter, prompts[0]))
        figures = []
        for name, drafter in drafters.items():
            progress(f"tandem distill: measuring the {name} draft on {len(prompts)} held-out prompts")
            alpha = acceptance(drafter, prompts, references)
            mean_accepted, per_round = accepted_lengths(drafter, prompts, references, draft_tokens)
            speedup, best_k = predicted_speedup(alpha, speed[name] / target_s, draft_tokens)
            path, weights = drafts[name]
            figures.append(DraftFigures(
                draft=name, path=str(path), weights=weights, size_mb=round(Path(path).stat().st_size / 1e6, 1),
                acceptance=round(alpha, 4), mean_accepted_length=round(mean_accepted, 3),
                tokens_per_round=round(per_round, 3), draft_tokens_per_s=round(1 / speed[name], 1),
                predicted_speedup=round(speedup, 3), best_draft_tokens=best_k))
        return figures, target_s
    finally:
        for drafter in drafters.values():
            drafter.close()


def table(figures: list[DraftFigures], draft_tokens: int) -> str:
    rows = [f"| draft | weights | MB | acceptance | mean accepted length (k={draft_tokens}) | draft tok/s (1 core) "
            "| predicted speedup (best k) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for f in figures:
        rows.append(f"| {f.draft} | {f.weights} | {f.size_mb:.1f} | {f.acceptance:.3f} | {f.mean_accepted_length:.2f} "
                    f"| {f.draft_tokens_per_s:.0f} | {f.predicted_speedup:.2f}x (k={f.best_draft_tokens}) |")
    return "\n".join(rows)


def as_dicts(figures: list[DraftFigures]) -> list[dict]:
    return [asdict(f) for f in figures]
