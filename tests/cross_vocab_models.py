"""Tiny real models of two tokenizer families whose next token is set by hand, built at test time.

A cross-vocabulary pair only drafts usefully when the draft says, in its own tokens, roughly
what the target says in its own; two random models of different vocabularies agree on nothing.
So these models are *bigram* Llamas: every layer adds nothing (zero output projections), the
logits depend on the last token alone, and a table sets them: rows[a][b] is the logit of b after
a (every other token 0; a token without a row gives all-zero logits). They are real
transformers models (the target) and real llama.cpp GGUFs (the draft); the test's reference is
always the target model's own output, never these tables.
"""

from __future__ import annotations

from pathlib import Path

from bench.tiny_models import build_tiny_target, hf_to_gguf


def build_bigram_model(out_dir: Path, tokenizer_dir: Path, rows: dict[int, dict[int, float]]) -> Path:
    """Saves a tiny Llama with `tokenizer_dir`'s tokenizer whose logits after token a are rows[a]."""
    import torch
    from transformers import LlamaForCausalLM

    build_tiny_target(out_dir, tokenizer_dir)
    model = LlamaForCausalLM.from_pretrained(out_dir)
    hidden = model.config.hidden_size
    if len(rows) > hidden:
        raise ValueError(f"at most {hidden} rows")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.fill_(1.0 if name.endswith("norm.weight") else 0.0)
        # RMSNorm turns the unit vector e_slot into sqrt(hidden) * e_slot.
        scale = hidden ** 0.5
        for slot, (token, successors) in enumerate(rows.items()):
            model.model.embed_tokens.weight[token, slot] = 1.0
            for successor, logit in successors.items():
                model.lm_head.weight[successor, slot] = logit / scale
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def chain_rows(chain: list[int], end_id: int, logit: float = 10.0) -> dict[int, dict[int, float]]:
    """Rows under which greedy decoding after chain[0] writes chain[1:], then end_id."""
    if len(set(chain)) != len(chain):
        raise ValueError("a chain needs distinct ids")
    return {token: {successor: logit} for token, successor in zip(chain, [*chain[1:], end_id])}


def bigram_gguf(out_dir: Path, tokenizer_dir: Path, rows: dict[int, dict[int, float]], own_vocab: bool) -> Path:
    """The bigram model as an F32 GGUF for llama.cpp (own_vocab: its SentencePiece vocabulary;
    else SmolLM2's byte-level BPE keys)."""
    hf_dir = build_bigram_model(out_dir, tokenizer_dir, rows)
    return hf_to_gguf(hf_dir, out_dir.with_suffix(".gguf"), own_vocab=own_vocab)


def silent_gguf(out_dir: Path, tokenizer_dir: Path) -> Path:
    """A tiny draft whose every token is a control token: it detokenizes to nothing at all.

    SmolLM2's tokenizer keys with every token typed CONTROL (a broken conversion would look
    like this): llama.cpp loads it, and no token renders as text.
    """
    import gguf

    from bench.tiny_models import _tokenizer_fields
    from edge.convert import write_llama_gguf

    hf_dir = build_tiny_target(out_dir, tokenizer_dir)

    def add_tokenizer(writer: gguf.GGUFWriter) -> None:
        for key, value, value_type, item_type in _tokenizer_fields(False):
            if key == "tokenizer.ggml.token_type":
                value = [int(gguf.TokenType.CONTROL)] * len(value)
            writer.add_key_value(key, value, value_type, item_type)

    return write_llama_gguf(hf_dir, out_dir.parent / "silent-draft.gguf", add_tokenizer, dtype="f32",
                            name="silent-draft")
