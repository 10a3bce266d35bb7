"""Cross-vocabulary math (common/vocab_map.py): crafted tables and real tokenizers, no model.

The real tokenizers are the two families built at test time: SmolLM2's byte-level BPE
("Ġ" spaces, GPT-2 byte alphabet) and a tiny SentencePiece BPE ("▁" spaces, <0xNN> byte fallback).
"""

from __future__ import annotations

import numpy as np
import pytest

from common.sampling import logits_to_probs
from common.vocab_map import (
    char_boundary_start, complete_utf8_length, intersect_vocabularies, pair_problems, slem_proposal,
)


@pytest.mark.parametrize("text", ["abc", "é", "中文", "🚀", "a🚀b中"])
def test_complete_utf8_length_holds_back_only_a_trailing_partial_character(text):
    data = text.encode()
    assert complete_utf8_length(data) == len(data)
    last = text[-1].encode()
    for cut in range(1, len(last)):  # every way of ending inside the last character
        partial = data[: len(data) - len(last) + cut]
        assert complete_utf8_length(partial) == len(data) - len(last)


def test_char_boundary_start_finds_the_tokens_a_split_character_begins_in():
    rocket = "🚀".encode()
    assert char_boundary_start([b" a", b"b"]) == 1
    assert char_boundary_start([b" a", rocket[:2], rocket[2:3]]) == 2  # the last token is a continuation
    assert char_boundary_start([b" a", rocket[:1], rocket[1:2], rocket[2:]]) == 3
    assert char_boundary_start([b"x", b""]) == 0  # text after a special token starts afresh
    assert char_boundary_start([]) == 0


def words(text: str) -> list[int]:
    """A toy target tokenizer: one id per character, except "ab" is one token (id 1000)."""
    ids, i = [], 0
    while i < len(text):
        if text.startswith("ab", i):
            ids.append(1000)
            i += 2
        else:
            ids.append(ord(text[i]))
            i += 1
    return ids


def test_slem_proposes_the_target_tokens_of_the_drafted_text_and_drops_one_that_may_grow():
    # Committed "x"; the draft wrote "yab": the target's tokens are y, ab; "ab" may still grow.
    assert slem_proposal([ord("x")], b"x", b"yab", words, draft_ended=False) == [ord("y")]
    # Ended turn: nothing more will be written, so the last token stands.
    assert slem_proposal([ord("x")], b"x", b"yab", words, draft_ended=True) == [ord("y"), 1000]
    # A draft token ending inside a target token ("a" of "ab"): only complete ones come out.
    assert slem_proposal([ord("x")], b"x", b"ya", words, draft_ended=False) == [ord("y")]


def test_slem_refuses_text_that_re_tokenizes_the_committed_tokens():
    # Committed "a" (id 97); the draft wrote "b": the target would encode "ab" as one token, so
    # "a" then "b" is not how the target writes this text, and nothing is proposed.
    assert slem_proposal([ord("a")], b"a", b"bcd", words, draft_ended=False) == []


def test_slem_holds_back_a_split_character():
    rocket = "🚀".encode()

    def chars(text: str) -> list[int]:
        return [ord(c) for c in text]

    # The draft wrote "z" and half of the rocket: the rocket is not proposed, and z (the last
    # complete token) is dropped as well, since the text goes on.
    assert slem_proposal([ord("x")], b"x", b"z" + rocket[:2], chars, draft_ended=False) == []
    assert slem_proposal([ord("x")], b"x", b"yz" + rocket[:2], chars, draft_ended=False) == [ord("y")]
    assert slem_proposal([ord("x")], b"x", b"y" + rocket, chars, draft_ended=True) == [ord("y"), ord("🚀")]


def test_intersection_matches_by_bytes_and_excludes_special_tokens():
    # draft ids: 0 special, 1 " the", 2 "a", 3 byte-fallback "a" twin, 4 " th", 5 end of turn
    draft = [b"", b" the", b"a", b"a", b" th", b""]
    # target ids: 0 special, 1 "a", 2 " the", 3 duplicate " the", 4 "xyz"
    target = [b"", b"a", b" the", b" the", b"xyz"]
    inter = intersect_vocabularies(draft, target, draft_end_ids=[5], target_end_id=0)
    pairs = sorted(zip(inter.draft_ids.tolist(), inter.target_ids.tolist()))
    assert pairs == [(1, 2), (2, 1), (3, 1), (5, 0)]  # " th" has no twin; the lowest duplicate wins

    logits = np.array([9.0, 1.0, 2.0, 0.5, 3.0, -1.0])
    mapped = inter.map_logits(logits)
    assert mapped.shape == (5,) and np.isneginf(mapped[[3, 4]]).all()
    q = logits_to_probs(mapped, 1.0)
    shared = np.exp(logits[[1, 2, 3, 5]])  # TLI: the draft's mass on shared tokens, renormalized
    expected = np.array([np.exp(-1.0), np.exp(2.0) + np.exp(0.5), np.exp(1.0), 0, 0]) / shared.sum()
    np.testing.assert_allclose(q, expected, rtol=1e-12)


def test_real_families_intersect_through_their_space_and_byte_conventions(smollm2_text, spm_text):
    bpe_bytes = smollm2_text.token_bytes_table(len(smollm2_text))
    spm_bytes = spm_text.token_bytes_table(len(spm_text))
    inter = intersect_vocabularies(spm_bytes, bpe_bytes)
    assert len(inter) > 300  # every byte, and most of the tiny vocabulary's pieces
    for draft_id, target_id in zip(inter.draft_ids[:50], inter.target_ids[:50]):
        assert spm_bytes[draft_id] == bpe_bytes[target_id] != b""
    # "▁the" (SentencePiece) and "Ġthe" (byte-level BPE) are the same text, " the".
    spm_the = spm_text.hf.convert_tokens_to_ids("\u2581the")
    bpe_the = smollm2_text.hf.convert_tokens_to_ids("\u0120the")
    assert (spm_the, bpe_the) in set(zip(inter.draft_ids.tolist(), inter.target_ids.tolist()))
    # byte fallback <0xF0> pairs with the byte-level token for byte 0xF0
    fallback = spm_text.hf.convert_tokens_to_ids("<0xF0>")
    assert bpe_bytes[inter.target_ids[inter.draft_ids.tolist().index(fallback)]] == b"\xf0"
    # special tokens never pair
    assert not set(spm_text.special_tokens) & set(inter.draft_ids.tolist())
    assert not set(smollm2_text.special_tokens) & set(inter.target_ids.tolist())


def test_pair_problems_name_both_models():
    good = pair_problems("d", "t", [b"a"], lambda text: text.encode(), 1)
    assert good == []
    problems = pair_problems("draft-x", "target-y", [b"", b""], lambda text: b"", 0)
    assert len(problems) == 3
    assert "draft-x" in problems[0] and "target-y" in problems[1]
    assert "draft-x" in problems[2] and "target-y" in problems[2]


@pytest.fixture(scope="module")
def smollm2_text(tmp_path_factory):
    from transformers import AutoTokenizer

    from bench.tiny_models import smollm2_tokenizer_dir
    from common.text_tokenizer import TextTokenizer

    return TextTokenizer(AutoTokenizer.from_pretrained(smollm2_tokenizer_dir(tmp_path_factory.mktemp("bpe"))))


@pytest.fixture(scope="module")
def spm_text(tmp_path_factory):
    from transformers import AutoTokenizer

    from bench.tiny_models import tiny_sentencepiece_tokenizer_dir
    from common.text_tokenizer import TextTokenizer

    return TextTokenizer(AutoTokenizer.from_pretrained(tiny_sentencepiece_tokenizer_dir(tmp_path_factory.mktemp("spm"))))
