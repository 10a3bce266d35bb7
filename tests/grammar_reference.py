"""The reference for structured output: transformers' own generate with the grammar's mask as a
logits processor, and the ten schemas the exactness tests and the benchmark use (bench/schemas.py)."""

from __future__ import annotations

import json

from bench.schemas import SCHEMAS, _strict  # noqa: F401 (the one list, shared with `tandem bench --json-schemas`)
from common.grammar import GrammarMask, llg_tokenizer


def hf_greedy_constrained(target, prompt_ids: list[int], max_new_tokens: int, grammar: str) -> list[int]:
    """transformers' generate(do_sample=False) with the grammar's mask (common/grammar.py) as a
    logits processor: the target's own constrained greedy decoding."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    mask = GrammarMask(grammar, llg_tokenizer(target.text, target.vocab_size), target.vocab_size)

    class GrammarProcessor(LogitsProcessor):
        def __call__(self, input_ids, scores):
            assert mask.sync(input_ids[0, len(prompt_ids):].tolist())
            allowed = torch.from_numpy(mask.allowed()).to(scores.device)
            return scores.masked_fill(~allowed[None, : scores.shape[-1]], float("-inf"))

    eos = target.eos_token_ids
    with torch.inference_mode():
        out = target.model.generate(
            torch.tensor([prompt_ids], device=target.device), do_sample=False, max_new_tokens=max_new_tokens,
            eos_token_id=eos, pad_token_id=eos[0], logits_processor=LogitsProcessorList([GrammarProcessor()]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=target.device),
        )
    return out[0, len(prompt_ids):].tolist()


def parse_answer(text: str, schema: dict) -> object:
    """The answer as JSON, validated against its schema (raises otherwise)."""
    import jsonschema

    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


def hf_greedy_served(target, prompt_ids: list[int], max_new_tokens: int, sampling, grammar: str = "") -> list[int]:
    """transformers' generate(do_sample=False) with the served adjustments as a logits processor:
    penalties and biases (common.sampling.penalize, via SamplingParams.penalize), then the grammar's
    mask: the target's own greedy decoding under them."""
    import numpy as np
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    mask = GrammarMask(grammar, llg_tokenizer(target.text, target.vocab_size), target.vocab_size) if grammar else None

    class ServedProcessor(LogitsProcessor):
        def __call__(self, input_ids, scores):
            answer = input_ids[0, len(prompt_ids):].tolist()
            row = sampling.penalize(scores[0].float().cpu().numpy(), prompt_ids, answer)
            if mask is not None:
                row = mask.masked_after(answer, row)
            return torch.from_numpy(np.asarray(row, dtype=np.float32))[None].to(scores.device)

    eos = target.eos_token_ids
    with torch.inference_mode():
        out = target.model.generate(
            torch.tensor([prompt_ids], device=target.device), do_sample=False, max_new_tokens=max_new_tokens,
            eos_token_id=eos, pad_token_id=eos[0], logits_processor=LogitsProcessorList([ServedProcessor()]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=target.device),
        )
    return out[0, len(prompt_ids):].tolist()
