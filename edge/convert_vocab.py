"""The tokenizer half of the HF -> GGUF conversion: `tokenizer.*` keys from HF tokenizer files.

A GGUF tokenizer is a vocabulary (plus merges), special token ids, a chat template and, for
byte-level BPE, the name of one of llama.cpp's built-in pre-tokenizers (`tokenizer.ggml.pre`:
the regex set that splits text before merging). An HF tokenizer describes its pre-tokenizer as
data, so that name cannot be read off it; llama.cpp's own converter recognizes known
tokenizers by hashing their output on a check string. Here each candidate is tried instead:
llama.cpp loads the vocabulary with it and tokenizes the check texts, and the first candidate
whose ids equal the HF tokenizer's on every text wins. The reference is transformers'
AutoTokenizer, as the cloud loads it, and the first check text is the fingerprint probe, so
the winner always passes the cloud's tokenizer check (common/fingerprint.py).

Byte-level BPE covers the Llama 3 and SmolLM families. SentencePiece tokenizers (Llama 2,
TinyLlama) are refused: llama.cpp inserts SentencePiece's dummy-prefix space before every text
fragment (after each special token, even before a leading space), while transformers 5
prepends it only where a fragment does not already start with a space (or only at the start),
so no GGUF tokenizer can share such a target's fingerprint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from common.fingerprint import PROBE_TEXT

log = logging.getLogger(__name__)

GgufTokenizer = Callable[[Path, list[str]], "list[list[int]] | None"]
"""(GGUF path, texts) -> llama.cpp's ids for each text, or None if llama.cpp refuses the file."""

TokenizeWith = Callable[[Callable, list[str]], "list[list[int]] | None"]
"""(function adding tokenizer keys to a GGUF writer, texts) -> llama.cpp's ids, or None."""

EXTRA_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "3 33 333 3333 33333 333333 3333333 3.3 3..3 3...3 1,000,000 x²+y³ ⅔ ١٢٣ ๑๒๓\n"
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like tea? We'Ve a'lL\n"
    "   leading spaces, trailing spaces   \n...!!!??? ---- ==== ''' \"\"\" ```python\n"
    "(parens)[brackets]{braces} _under_score $dollar €uro 100% a/b\\c snake_case camelCaseWord\n"
    "ﬁ ﬂ Ｆｕｌｌｗｉｄｔｈ ｶﾀｶﾅ 🤔🦙 ⚒️ 😶‍🌫️ ขอบคุณ नमस्ते ሰላም Ἀθῆναι\n"
)
"""Text on which llama.cpp's pre-tokenizers disagree with each other: digit runs, cased
contractions, whitespace runs, punctuation before letters, scripts without spaces."""

CHECK_TEXTS = (PROBE_TEXT, EXTRA_CHECK_TEXT)

BPE_PRE_TOKENIZERS = (
    "llama-bpe", "smollm", "gpt-2", "default", "qwen2", "deepseek-llm", "deepseek-coder",
    "deepseek-v3", "falcon", "mpt", "starcoder", "refact", "command-r", "stablelm2", "olmo", "dbrx",
    "smaug-bpe", "poro-chat", "chatglm-bpe", "viking", "jais", "tekken", "codeshell", "bloom",
    "gpt3-finnish", "exaone", "chameleon", "minerva-7b", "gpt-4o", "superbpe", "trillion",
    "bailingmoe", "seed-coder", "hunyuan", "kimi-k2", "grok-2",
)
"""llama.cpp pre-tokenizer names, one per distinct behaviour, the Llama family's first.
A name the installed llama.cpp does not know fails to load and is skipped."""


class TokenizerNotConvertible(ValueError):
    """No GGUF tokenizer reproduces this HF tokenizer in llama.cpp."""


@dataclass(frozen=True)
class GgufVocab:
    """One candidate set of `tokenizer.*` keys."""

    pre: str  # tokenizer.ggml.pre
    tokens: list[str]  # by id
    token_types: list[int]  # gguf.TokenType by id
    special: object  # gguf.SpecialVocab: merges, special ids, add_bos/eos flags, chat template

    def add_to(self, writer) -> None:
        writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        self.special.add_to_gguf(writer, quiet=True)


def choose_vocab(model_dir: Path, n_vocab: int, tokenize_with: TokenizeWith) -> GgufVocab:
    """The candidate under which llama.cpp tokenizes the check texts exactly like HF.

    Falls back to one that matches on the fingerprint probe alone (with a warning); raises
    TokenizerNotConvertible when none does.
    """
    tokenizer = _hf_tokenizer(model_dir)
    reference = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in CHECK_TEXTS]
    base = _byte_level_bpe_vocab(model_dir, tokenizer, n_vocab)
    probe_match = None
    for pre in BPE_PRE_TOKENIZERS:
        candidate = replace(base, pre=pre)
        ids = tokenize_with(candidate.add_to, list(CHECK_TEXTS))
        if ids == reference:
            log.info("tokenizer: byte-level BPE with llama.cpp's %r pre-tokenizer "
                     "(tokenizes the check texts exactly like the HF tokenizer)", pre)
            return candidate
        if ids is not None and ids[0] == reference[0] and probe_match is None:
            probe_match = candidate
    if probe_match is not None:
        log.warning("tokenizer: llama.cpp's %r pre-tokenizer matches the HF tokenizer on the fingerprint "
                    "probe but not on every check text; some rare text may tokenize differently",
                    probe_match.pre)
        return probe_match
    raise TokenizerNotConvertible(
        "llama.cpp tokenizes differently from the HF tokenizer under each of its byte-level BPE "
        "pre-tokenizers, so the cloud would refuse this draft's tokenizer fingerprint"
    )


def _hf_tokenizer(model_dir: Path):
    """transformers' AutoTokenizer, checked to be a byte-level BPE llama.cpp can reproduce."""
    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise TokenizerNotConvertible("no tokenizer.json (a fast, byte-level BPE tokenizer is required)")
    spec = json.loads(tokenizer_json.read_text())["model"]
    if (model_dir / "tokenizer.model").is_file() or spec.get("type") != "BPE" or spec.get("byte_fallback"):
        raise TokenizerNotConvertible(
            "its tokenizer is SentencePiece-style (tokenizer.model or byte fallback), not byte-level BPE; "
            "llama.cpp adds SentencePiece's prefix space where transformers does not (after special tokens, "
            "before leading spaces), so no GGUF tokenizer would match this model's tokenizer fingerprint"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _byte_level_bpe_vocab(model_dir: Path, tokenizer, n_vocab: int) -> GgufVocab:
    """Tokens and types as llama.cpp's `get_vocab_base` makes them; merges from tokenizer.json."""
    import gguf

    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if max(by_id) >= n_vocab:
        raise TokenizerNotConvertible(f"the tokenizer has ids up to {max(by_id)}, beyond vocab_size {n_vocab}")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:  # the embedding matrix is padded beyond the tokenizer
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token_type = gguf.TokenType.NORMAL
        if i in added:
            if not added[i].normalized:  # llama.cpp expects added tokens in normalized form
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if added[i].special or _looks_special(token):
                token_type = gguf.TokenType.CONTROL
            else:
                token = token.replace("\u2581", " ")  # llama.cpp expects user-defined spaces as spaces
                token_type = gguf.TokenType.USER_DEFINED
        tokens.append(token)
        types.append(token_type)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    return GgufVocab("", tokens, types, special)


def _looks_special(token: str) -> bool:
    """Added tokens some tokenizers forget to mark special (llama.cpp's `does_token_look_special`)."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )
