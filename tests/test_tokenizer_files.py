"""The edge tokenizes with `tokenizers` alone, exactly as transformers does.

transformers builds a draft's tokenizer once (edge/tokenizer_conversion.py); every later start
reads the saved files with `tokenizers` (TextTokenizer.from_file). For the default draft, the
SentencePiece drafts (a directory with and without a BOS in its default encoding, and a GGUF
with its SPM vocabulary) and Gemma, the ids must equal transformers' own, with and without
special tokens, over the fingerprint probe, the prompts the family tests use and 200 random
Unicode strings; and everything TextTokenizer derives (BOS/EOS rules, end ids, template,
fingerprint, token bytes) must be the same as from transformers' tokenizer.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from pathlib import Path

import pytest
from test_gemma import CHAT_PROMPTS, RAW_PROMPTS as GEMMA_PROMPTS
from test_tokenizer_families import RAW_PROMPTS

from bench.tiny_models import build_tiny_target, hf_to_gguf, tiny_sentencepiece_tokenizer_dir
from common.fingerprint import PROBE_TEXT
from common.text_tokenizer import SPEC_FILE, TextTokenizer, TokenizerSpec

SPECIAL_TEXTS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<bos>", "<eos>",
                 "<start_of_turn>", "<end_of_turn>", "[INST]", "<unk>", "<pad>"]
ALPHABETS = [(0x20, 0x7E), (0x09, 0x0D), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
             (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F300, 0x1F64F),
             (0x200B, 0x200F), (0x2028, 0x202F), (0xFE00, 0xFE0F), (0x10000, 0x1007F), (0xE000, 0xE0FF)]


def random_texts(count: int = 200, seed: int = 25) -> list[str]:
    """Seeded strings over many scripts, whitespace runs, zero-width and private-use characters,
    emoji with selectors, and special-token texts dropped in between."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.1:
                pieces.append(rng.choice(SPECIAL_TEXTS))
            else:
                low, high = rng.choice(ALPHABETS)
                pieces.append("".join(chr(rng.randint(low, high)) for _ in range(rng.randint(1, 8))))
            if rng.random() < 0.3:
                pieces.append(" " * rng.randint(1, 3))
        texts.append("".join(pieces))
    return texts


TEXTS = [PROBE_TEXT, *PROBE_TEXT.splitlines(keepends=True), *RAW_PROMPTS, *GEMMA_PROMPTS, *CHAT_PROMPTS, "",
         " ", "  leading spaces", *SPECIAL_TEXTS, *random_texts()]


def assert_same_tokenizer(source: Path):
    """The edge's tokenizer of `source` (files read by `tokenizers`) against transformers' own."""
    from edge.tokenizer import load_tokenizer, tokenizer_files
    from edge.tokenizer_conversion import declared_eos_ids, transformers_tokenizer

    reference = transformers_tokenizer(source)
    edge = load_tokenizer(source)
    assert "transformers" not in type(edge.hf).__module__
    for text in TEXTS:
        assert edge.tokenize(text) == list(reference(text, add_special_tokens=False)["input_ids"]), repr(text)
        assert edge.hf(text)["input_ids"] == list(reference(text)["input_ids"]), repr(text)
    expected = TextTokenizer(reference, declared_eos_ids(source))
    assert len(edge) == len(expected)
    assert edge.special == expected.special
    assert edge.special_tokens == expected.special_tokens
    assert edge.end_ids == expected.end_ids
    assert edge.chat_template == expected.chat_template
    assert edge.fingerprint == expected.fingerprint  # as cached beside the files
    folder = tokenizer_files(source)
    spec = TokenizerSpec.from_json((folder / SPEC_FILE).read_text())
    recomputed = TextTokenizer.from_file(folder / "tokenizer.json", dataclasses.replace(spec, fingerprint=None))
    assert recomputed.fingerprint == expected.fingerprint
    assert edge.token_bytes_table(len(expected)) == expected.token_bytes_table(len(expected))
    return edge


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test converts in its own cache, so the conversion itself is under test."""
    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path / "cache"))


def test_the_default_draft():
    from common.model_paths import default_gguf_path

    edge = assert_same_tokenizer(default_gguf_path())
    assert not edge.special.add_bos


@pytest.fixture(scope="module")
def spm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm-files")
    with_bos = build_tiny_target(root / "spm-target", tiny_sentencepiece_tokenizer_dir(root / "tokenizer"), seed=3)
    without_bos = tiny_sentencepiece_tokenizer_dir(root / "tokenizer-no-bos", add_bos_token=False)
    gguf = hf_to_gguf(with_bos, root / "spm-draft.gguf", own_vocab=True)
    return {"with_bos": with_bos, "without_bos": without_bos, "gguf": gguf}


@pytest.mark.parametrize("kind", ["with_bos", "without_bos", "gguf"])
def test_sentencepiece_drafts(spm_dirs, kind):
    edge = assert_same_tokenizer(spm_dirs[kind])
    assert edge.special.add_bos == (kind != "without_bos")


def test_a_directory_is_converted_again_when_its_tokenizer_changes(spm_dirs, tmp_path):
    from edge.tokenizer import load_tokenizer

    draft = shutil.copytree(spm_dirs["with_bos"], tmp_path / "draft")
    assert load_tokenizer(draft).special.add_bos
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(spm_dirs["without_bos"] / name, draft / name)
    assert not load_tokenizer(draft).special.add_bos


@pytest.mark.slow
def test_gemma(gemma_path):
    edge = assert_same_tokenizer(gemma_path)
    assert edge.special.add_bos and edge.special.bos_token == "<bos>"
