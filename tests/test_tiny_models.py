"""Checks that the tiny test models behave as the rest of the suite assumes."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from bench.tiny_models import (  # noqa: E402
    build_tiny_target,
    greedy_agreement,
    hf_logits,
    hf_to_gguf,
    llama_logits,
    load_llama,
    smollm2_gguf_path,
    smollm2_tokenizer_dir,
    top2_margins,
)

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    return",
    "Once upon a time, in a land far away,",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]
NEW_TOKENS = 48
SENTENCE = "Speculative decoding lets a small model draft tokens that a large model verifies."

EXACT_LOGIT_TOL = 5e-4
"""llama.cpp F32 vs transformers; measured ~5e-5 on logits of std ~10."""

MARGIN_MEDIAN_MIN = 1.0
"""Median top-1 minus top-2 logit; measured ~1.7 (an untouched random init: ~0.03)."""

DRAFT_NOISE = 0.05
"""Weight noise of the test draft; measured greedy agreement ~60%."""


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """A 3M-parameter model gains nothing from 2 threads, and when another
    process holds one of the 2 cores, 2 spinning threads make it 5-40x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="module")
def tokenizer_dir(workdir):
    return smollm2_tokenizer_dir(workdir)


@pytest.fixture(scope="module")
def target_dir(workdir, tokenizer_dir):
    return build_tiny_target(workdir / "target", tokenizer_dir)


@pytest.fixture(scope="module")
def target(target_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(target_dir).eval(), AutoTokenizer.from_pretrained(target_dir)


@pytest.fixture(scope="module")
def sequences(target):
    """Each prompt followed by the target's own greedy continuation."""
    import torch

    model, tokenizer = target
    out = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            full = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        out.append((ids.shape[1], full[0].tolist()))
    return out


@pytest.fixture(scope="module")
def target_logits(target, sequences):
    return [hf_logits(target[0], ids) for _, ids in sequences]


@pytest.fixture(scope="module")
def exact_gguf(workdir, target_dir):
    return hf_to_gguf(target_dir, workdir / "exact.gguf")


def test_tokenizer_dir_is_cached(workdir, tokenizer_dir):
    assert (tokenizer_dir / "tokenizer.json").is_file()
    assert smollm2_tokenizer_dir(workdir) == tokenizer_dir


def test_target_is_seeded(workdir, tokenizer_dir, target_dir):
    from safetensors.numpy import load_file

    same = load_file(build_tiny_target(workdir / "same-seed", tokenizer_dir) / "model.safetensors")
    other = load_file(build_tiny_target(workdir / "other-seed", tokenizer_dir, seed=1) / "model.safetensors")
    reference = load_file(target_dir / "model.safetensors")
    assert all(np.array_equal(reference[k], same[k]) for k in reference)
    assert not np.array_equal(reference["lm_head.weight"], other["lm_head.weight"])


def test_target_logits_are_peaky(target_logits):
    margins = np.concatenate([top2_margins(logits) for logits in target_logits])
    assert np.median(margins) > MARGIN_MEDIAN_MIN
    assert np.mean(margins > 0.5) > 0.7


def test_target_greedy_text_is_varied(sequences):
    for n_prompt, ids in sequences:
        assert len(set(ids[n_prompt:])) >= NEW_TOKENS // 3


def test_target_next_token_depends_on_context(target, sequences, target_logits):
    """Attention must matter, or KV-cache bugs elsewhere would go unnoticed."""
    model, _ = target
    _, ids = sequences[0]
    without_context = np.array([hf_logits(model, [token])[0].argmax() for token in ids])
    assert np.mean(without_context != target_logits[0].argmax(-1)) > 0.5


def test_exact_gguf_matches_transformers(exact_gguf, sequences, target_logits):
    llm = load_llama(exact_gguf)
    for (_, ids), expected in zip(sequences, target_logits):
        batched = llama_logits(llm, ids)
        assert np.abs(batched - expected).max() < EXACT_LOGIT_TOL
        assert greedy_agreement(expected, batched) == 1.0
    ids = sequences[0][1]
    llm.reset()
    for token in ids:
        llm.eval([token])
    incremental = np.array(llm.scores[: len(ids)], dtype=np.float32)
    assert np.abs(incremental - target_logits[0][: len(ids)]).max() < EXACT_LOGIT_TOL


def test_exact_gguf_tokenizes_like_smollm2(exact_gguf, target):
    _, tokenizer = target
    llm = load_llama(exact_gguf, vocab_only=True)
    for text in [SENTENCE, *PROMPTS]:
        expected = tokenizer(text, add_special_tokens=False).input_ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected


def test_noisy_gguf_agrees_partly(workdir, target_dir, exact_gguf, sequences, target_logits):
    noisy = hf_to_gguf(target_dir, workdir / "noisy.gguf", noise=DRAFT_NOISE, noise_seed=3)
    again = hf_to_gguf(target_dir, workdir / "noisy-again.gguf", noise=DRAFT_NOISE, noise_seed=3)
    assert noisy.read_bytes() == again.read_bytes()
    assert noisy.read_bytes() != exact_gguf.read_bytes()
    llm = load_llama(noisy)
    agreement = np.mean(
        [greedy_agreement(expected, llama_logits(llm, ids)) for (_, ids), expected in zip(sequences, target_logits)]
    )
    assert 0.3 < agreement < 0.95


def test_shuffled_vocab_tokenizes_differently(workdir, target_dir, exact_gguf):
    shuffled_path = hf_to_gguf(target_dir, workdir / "shuffled.gguf", shuffle_vocab=True)
    original = load_llama(exact_gguf, vocab_only=True)
    shuffled = load_llama(shuffled_path)
    text = SENTENCE.encode()
    original_ids = original.tokenize(text, add_bos=False, special=True)
    shuffled_ids = shuffled.tokenize(text, add_bos=False, special=True)
    assert shuffled.n_vocab() == original.n_vocab()
    assert len(shuffled_ids) == len(original_ids)
    assert sum(a != b for a, b in zip(original_ids, shuffled_ids)) >= len(original_ids) // 2
    assert shuffled.detokenize(shuffled_ids) == text
    marker = b"<|im_start|>"
    assert shuffled.tokenize(marker, add_bos=False, special=True) == original.tokenize(marker, add_bos=False, special=True)


def test_smollm2_gguf_is_found():
    path = smollm2_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
