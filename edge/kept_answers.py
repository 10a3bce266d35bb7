"""Kept answers (`--keep-answers`, opt-in): what the edge appends to the local answer log
(common/answer_log.py) after each answer, for `tandem distill --data`."""

from __future__ import annotations


def keep_answer(answer_log, request, generation, drafter, info) -> None:
    """Appends the prompt and the tokens the cloud committed to the local answer log, after an
    answer of edge.engine.EdgeEngine.generate: never what the edge wrote alone (edge mode, the
    offline fallback's continuation, provisional tokens not yet verified)."""
    ids = generation.token_ids[: generation.fallback_at] if generation.degraded else generation.token_ids
    if generation.provisional_from is not None:  # written while the cloud was away, not yet verified
        ids = ids[: generation.provisional_from]
    if generation.mode.value == "edge" or not ids:  # edge.engine.Mode.EDGE: the local model alone
        return

    def text(token_ids: list[int]) -> str:  # the target's ids: a cross-vocabulary drafter speaks them too
        return b"".join(drafter.token_bytes(t) for t in token_ids).decode("utf-8", errors="replace")

    answer_log.record(
        model=info.model_name if info else "", tokenizer=info.tokenizer_fingerprint if info else "",
        mode=generation.mode.value, prompt=request.prompt_text or (text(request.prompt_token_ids) if drafter else ""),
        prompt_ids=list(request.prompt_token_ids), answer=text(ids) if drafter else generation.text,
        answer_ids=list(ids), finish=generation.finish_reason.name.lower())
