"""The tokenizer half of the HF -> GGUF conversion: `tokenizer.*` keys from HF tokenizer files.

A GGUF tokenizer is a vocabulary (plus merges or scores), special token ids, BOS/EOS rules, a
chat template and, for byte-level BPE, the name of one of llama.cpp's built-in pre-tokenizers
(`tokenizer.ggml.pre`: the regex set that splits text before merging).

What the hybrid needs from the GGUF is its vocabulary: the same ids for the same pieces as the
target's tokenizer. Prompts are tokenized by transformers' pipeline on the edge (edge/tokenizer.py) and
fed to llama.cpp as ids, so llama.cpp's own text -> ids may differ without harm. Still, the GGUF
should tokenize well for llama.cpp's other users:

- Byte-level BPE (the Llama 3 and SmolLM families): an HF tokenizer describes its pre-tokenizer
  as data, so its llama.cpp name cannot be read off it; llama.cpp's own converter recognizes
  known tokenizers by hashing their output on a check string. Here each candidate is tried
  instead: llama.cpp loads the vocabulary with it and tokenizes the check texts, and the first
  candidate whose ids equal the HF tokenizer's on every text wins (else the first that matches
  on the fingerprint probe, else the first llama.cpp loads, with a warning).
- SentencePiece (Llama 2, TinyLlama, Gemma): the pieces, scores and types of tokenizer.model,
  as llama.cpp's `llama` tokenizer model takes them. llama.cpp inserts SentencePiece's prefix
  space before every text fragment (after each special token too), where transformers 5 does
  not, which is why the edge never lets llama.cpp tokenize text.
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
    model: str = "gpt2"  # llama.cpp's name for byte-level BPE; "llama" for SentencePiece
    scores: list[float] | None = None  # SentencePiece piece scores by id
    add_space_prefix: bool | None = None  # SentencePiece's dummy prefix

    def add_to(self, writer) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


def choose_vocab(model_dir: Path, n_vocab: int, tokenize_with: TokenizeWith) -> GgufVocab:
    """The `tokenizer.*` keys for model_dir: SentencePiece's as they are; for byte-level BPE, the
    candidate pre-tokenizer under which llama.cpp tokenizes the check texts exactly like HF.

    Falls back to one that matches on the fingerprint probe alone, then to the first llama.cpp
    loads (with a warning: llama.cpp alone may tokenize some text differently; the hybrid is
    unaffected); raises TokenizerNotConvertible when llama.cpp loads none.
    """
    tokenizer = _hf_tokenizer(model_dir)
    if (model_dir / "tokenizer.model").is_file():
        return sentencepiece_vocab(model_dir, tokenizer, n_vocab)
    reference = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in CHECK_TEXTS]
    base = _byte_level_bpe_vocab(model_dir, tokenizer, n_vocab)
    probe_match = loaded = None
    for pre in BPE_PRE_TOKENIZERS:
        candidate = replace(base, pre=pre)
        ids = tokenize_with(candidate.add_to, list(CHECK_TEXTS))
        if ids == reference:
            log.info("tokenizer: byte-level BPE with llama.cpp's %r pre-tokenizer "
                     "(tokenizes the check texts exactly like the HF tokenizer)", pre)
            return candidate
        if ids is not None and ids[0] == reference[0] and probe_match is None:
            probe_match = candidate
        if ids is not None and loaded is None:
            loaded = candidate
    chosen = probe_match or loaded
    if chosen is None:
        raise TokenizerNotConvertible("llama.cpp loads this vocabulary under none of its byte-level BPE pre-tokenizers")
    log.warning("tokenizer: llama.cpp's %r pre-tokenizer is the closest to the HF tokenizer (%s); llama.cpp alone "
                "may tokenize some text differently (Tandem tokenizes with transformers, so the hybrid is exact)",
                chosen.pre, "same ids on the fingerprint probe" if chosen is probe_match else "no check text matched")
    return chosen


def _hf_tokenizer(model_dir: Path):
    """transformers' AutoTokenizer, checked to be a kind this converter can write."""
    tokenizer_json = model_dir / "tokenizer.json"
    sentencepiece_model = (model_dir / "tokenizer.model").is_file()
    if not tokenizer_json.is_file() and not sentencepiece_model:
        raise TokenizerNotConvertible("no tokenizer.json or tokenizer.model")
    if not sentencepiece_model:
        spec = json.loads(tokenizer_json.read_text())["model"]
        if spec.get("type") != "BPE" or spec.get("byte_fallback"):
            raise TokenizerNotConvertible(
                "its tokenizer is SentencePiece-style (byte fallback) without the tokenizer.model that holds "
                "its scores, or not BPE at all; add tokenizer.model, or convert it with llama.cpp's "
                "convert_hf_to_gguf.py"
            )
    from edge.tokenizer_conversion import transformers_tokenizer  # the one edge module with transformers

    return transformers_tokenizer(model_dir)


def sentencepiece_vocab(model_dir: Path, tokenizer, n_vocab: int) -> GgufVocab:
    """Pieces, scores and types from tokenizer.model, as llama.cpp's converter writes them;
    tokens added beyond it come from the HF tokenizer; the rest of the ids are padding."""
    import gguf
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    added = tokenizer.added_tokens_decoder
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        if i < processor.vocab_size():
            token, score = processor.IdToPiece(i), processor.GetScore(i)
            token_type = (gguf.TokenType.UNKNOWN if processor.IsUnknown(i) else
                          gguf.TokenType.CONTROL if processor.IsControl(i) else
                          gguf.TokenType.UNUSED if processor.IsUnused(i) else
                          gguf.TokenType.BYTE if processor.IsByte(i) else gguf.TokenType.NORMAL)
        elif i in added:
            token, score = added[i].content, -1000.0
            token_type = gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
        else:
            token, score, token_type = f"[PAD{i}]", -1000.0, gguf.TokenType.UNUSED
        tokens.append(token)
        scores.append(score)
        types.append(token_type)
    first = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"][:1])
    special = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=n_vocab)
    log.info("tokenizer: SentencePiece (%d pieces) as llama.cpp's 'llama' tokenizer model", processor.vocab_size())
    return GgufVocab("default", tokens, types, special, model="llama", scores=scores,
                     add_space_prefix=bool(first) and first[0].startswith("\u2581"))


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
