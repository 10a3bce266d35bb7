"""An HF Llama directory as the edge's draft model: converted once to GGUF, cached, exact.

The product converter (edge/convert.py) turns the tiny target's own directory into a GGUF.
llama.cpp must then compute transformers' logits, tokenize like the target (same fingerprint),
reuse the cached file, and drive a hybrid run whose output is the target's greedy output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import hf_greedy
from bench.tiny_models import (
    build_tiny_target,
    greedy_agreement,
    hf_logits,
    llama_logits,
    load_llama,
    tiny_sentencepiece_tokenizer_dir,
)

from edge.convert import UnsupportedModel, cached_gguf, convert
from edge.llama_drafter import LlamaDrafter, tokenize_with_vocab

PROMPTS = [
    "The quick brown fox",
    "def fibonacci(n):\n    return",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]
NEW_TOKENS = 40

F32_LOGIT_TOL = 5e-4
"""As in test_tiny_models: llama.cpp F32 vs transformers, measured ~5e-5 on logits of std ~6."""

F16_LOGIT_TOL = 0.5
"""F16 weights keep 11 significant bits; measured max |difference| ~0.07 on logits of std ~6."""

F16_MIN_AGREEMENT = 0.95
"""Greedy agreement of the F16 conversion with transformers; measured 1.0."""

VARIANTS = {
    # Tied embeddings (no output.weight), head_dim != hidden / heads, Q/K/V/O and MLP biases
    # (randomized), Llama 3.1 RoPE scaling with a short original context so positions < 64
    # already feel it, and bfloat16 weights.
    "tied-bias-llama3rope-bf16": dict(
        dtype="bfloat16", tie_word_embeddings=True, head_dim=32, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    ),
    # Linear RoPE scaling, no GQA, weights in shards with an index.
    "linear-rope-sharded": dict(
        max_shard_size="4MB", num_key_value_heads=4,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    ),
}


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory):
    """Conversions go to a private cache, not ~/.cache; CLI subprocesses inherit it."""
    root = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TANDEM_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def sequences(tiny_target):
    """Each prompt followed by the target's own greedy continuation."""
    out = []
    for prompt in PROMPTS:
        ids = tiny_target.tokenize(prompt)
        out.append(ids + hf_greedy(tiny_target, ids, NEW_TOKENS))
    return out


def tandem(*args, timeout=300):
    env = {**os.environ, "TANDEM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tandem", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("dtype,tolerance,min_agreement", [
    ("f32", F32_LOGIT_TOL, 1.0),
    ("f16", F16_LOGIT_TOL, F16_MIN_AGREEMENT),
])
def test_converted_logits_match_transformers(tiny_models, tiny_target, sequences, dtype, tolerance,
                                             min_agreement):
    llm = load_llama(cached_gguf(tiny_models.target_dir, tokenize_gguf=tokenize_with_vocab, dtype=dtype))
    try:
        for ids in sequences:
            expected, converted = hf_logits(tiny_target.model, ids), llama_logits(llm, ids)
            assert np.abs(converted - expected).max() < tolerance
            assert greedy_agreement(expected, converted) >= min_agreement
    finally:
        llm.close()


def test_directory_draft_tokenizes_like_the_target(tiny_models, tiny_target):
    drafter = LlamaDrafter(tiny_models.target_dir, n_ctx=256, threads=1)
    try:
        assert drafter.fingerprint == tiny_target.fingerprint
        for text in [*PROMPTS, "Numbers 1234567 and   spaces\r\n\ttabs; émoji 🚀 <|im_end|>"]:
            assert drafter.tokenize(text) == tiny_target.tokenize(text)
        assert drafter.eos_token_ids == tiny_target.eos_token_ids
        assert drafter.chat_template == tiny_target.chat_template != ""
        assert drafter.name == tiny_models.target_dir.name
    finally:
        drafter.close()


def test_conversion_is_cached_until_the_directory_changes(tiny_models, tmp_path, caplog):
    model_dir = shutil.copytree(tiny_models.target_dir, tmp_path / "model")
    caplog.set_level(logging.INFO, logger="edge.convert")
    first = cached_gguf(model_dir, tokenize_gguf=tokenize_with_vocab)
    assert "converting" in caplog.text
    written = first.stat().st_mtime_ns

    caplog.clear()
    drafter = LlamaDrafter(model_dir, n_ctx=256, threads=1)
    drafter.close()
    assert drafter.path == first and first.stat().st_mtime_ns == written
    assert "converting" not in caplog.text

    os.utime(model_dir / "config.json", ns=(written + 10**9, written + 10**9))
    second = cached_gguf(model_dir, tokenize_gguf=tokenize_with_vocab)
    assert "converting" in caplog.text
    assert second != first and second.is_file() and not first.exists()  # the stale one is removed


def test_cli_hybrid_with_a_directory_draft_equals_target_greedy(tiny_models, tiny_target):
    prompt = "Once upon a time"
    model_dir = str(tiny_models.target_dir)
    # --no-cloud-decode: a tiny target outruns its deferred draft and could stream the answer alone.
    result = tandem("generate", prompt, "--json", "--max-tokens", "24", "--no-cloud-decode", "--model", model_dir,
                    "--draft-model", model_dir)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["token_ids"] == hf_greedy(tiny_target, tiny_target.tokenize(prompt), 24)
    assert out["stats"]["accepted"] > 0  # the draft really drafted, and was mostly right


def test_sdk_accepts_a_directory_draft(tiny_models, tiny_target, tiny_cloud):
    from edge import TandemClient

    prompt = "def add(a, b):"
    with TandemClient(tiny_cloud.address, draft_model=str(tiny_models.target_dir)) as tandem:
        completion = tandem.complete(prompt, max_tokens=16)
    assert completion.token_ids == hf_greedy(tiny_target, tiny_target.tokenize(prompt), 16)
    assert completion.stats["accepted"] > 0


def test_cli_refuses_a_non_llama_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    result = tandem("generate", "hi", "--mode", "edge", "--draft-model", str(tmp_path), timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert "GPT2LMHeadModel" in result.stderr and "convert_hf_to_gguf.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_sentencepiece_without_its_model_file_is_refused_with_the_reason(tmp_path):
    model_dir = build_tiny_target(tmp_path / "model", tiny_sentencepiece_tokenizer_dir(tmp_path / "tokenizer"))
    (model_dir / "tokenizer.model").unlink()  # the scores SentencePiece's GGUF form needs live there
    with pytest.raises(UnsupportedModel, match="tokenizer.model") as refused:
        LlamaDrafter(model_dir, n_ctx=256, threads=1)
    assert "convert_hf_to_gguf.py" in str(refused.value)


class KeyRecorder:
    """Stands in for a GGUFWriter: records every add_* call, so a candidate's keys can be read."""

    def __init__(self):
        self.calls = {}

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.setdefault(name, args)


@pytest.mark.parametrize("answers,chosen", [
    ({"smollm": "probe", "gpt-2": "all"}, "gpt-2"),  # an exact match beats an earlier partial one
    ({"llama-bpe": "refused", "smollm": "probe"}, "smollm"),  # else the first fingerprint match
    ({"llama-bpe": "refused", "smollm": "wrong"}, "smollm"),  # else the first llama.cpp loads
    ({"*": "refused"}, None),  # else a clear error
])
def test_pre_tokenizer_choice(tiny_models, tiny_target, answers, chosen):
    """choose_vocab's rule, with llama.cpp's answers scripted per pre-tokenizer name."""
    from edge.convert_vocab import CHECK_TEXTS, TokenizerNotConvertible, choose_vocab

    reference = [tiny_target.tokenize(text) for text in CHECK_TEXTS]
    scripted = {"all": reference, "probe": [reference[0], reference[1][:-1]], "refused": None,
                "wrong": [reference[0][:-1], reference[1]]}

    def tokenize_with(add_tokenizer, texts):
        keys = KeyRecorder()
        add_tokenizer(keys)
        assert keys.calls["add_tokenizer_model"] == ("gpt2",) and texts == list(CHECK_TEXTS)
        return scripted[answers.get(keys.calls["add_tokenizer_pre"][0], answers.get("*", "wrong"))]

    if chosen is None:
        with pytest.raises(TokenizerNotConvertible):
            choose_vocab(tiny_models.target_dir, tiny_target.vocab_size, tokenize_with)
    else:
        assert choose_vocab(tiny_models.target_dir, tiny_target.vocab_size, tokenize_with).pre == chosen


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_variants_match_transformers(tiny_models, tmp_path, variant):
    import gguf
    import torch
    from transformers import LlamaForCausalLM

    settings = VARIANTS[variant]
    model_dir = build_tiny_target(tmp_path / variant, tiny_models.target_dir, **settings)
    path = convert(model_dir, tmp_path / "draft.gguf", tokenize_gguf=tokenize_with_vocab, dtype="f32")
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = list(np.random.default_rng(0).integers(100, 40000, size=64))
    llm = load_llama(path)
    try:
        assert np.abs(llama_logits(llm, ids) - hf_logits(model, ids)).max() < F32_LOGIT_TOL
    finally:
        llm.close()
    names = {tensor.name for tensor in gguf.GGUFReader(path).tensors}
    assert ("output.weight" in names) != settings.get("tie_word_embeddings", False)
    assert ("rope_freqs.weight" in names) == (settings["rope_parameters"]["rope_type"] == "llama3")
