"""A Hugging Face Llama directory as a GGUF file, so llama.cpp can draft with it.

llama.cpp loads only GGUF. This module converts a saved `LlamaForCausalLM` (the SmolLM,
Llama 3, Llama 2 and TinyLlama families) once and caches the result:

- weights: safetensors (F32, F16 or BF16; sharded or not) become F16 (or F32) tensors. Q and
  K rows are permuted from HF's rotate-half RoPE layout to the interleaved one GGML uses;
- hyperparameters: config.json becomes the `llama.*` keys (RoPE base and scaling, RMS eps,
  heads, KV heads, head size, context length; tied embeddings mean no `output.weight`);
- tokenizer: the `tokenizer.*` keys, the HF tokenizer's vocabulary id by id (byte-level BPE
  with the closest llama.cpp pre-tokenizer, or SentencePiece; edge/convert_vocab.py).

It follows the Llama part of llama.cpp's convert_hf_to_gguf.py, without torch, and refuses
other architectures with a pointer to that script. It never imports llama_cpp: the caller
passes the function that tokenizes with a written GGUF's vocabulary (edge/llama_drafter.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InvalidArgument
from common.model_paths import model_cache_root
from edge.convert_vocab import GgufTokenizer, TokenizerNotConvertible, choose_vocab

log = logging.getLogger(__name__)

CONVERTER_VERSION = 2
"""Part of the cache key: bump it whenever the GGUF written for the same input changes."""

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
DTYPES = ("f16", "f32")
CACHE_KEY_SUFFIXES = (".json", ".safetensors", ".model", ".jinja")
"""Files whose size or mtime is part of the cache key: config, weights and tokenizer."""

GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
BLOCK_TENSORS = {
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
ROPE_TYPES = ("default", "linear", "llama3")

_STORED_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}

TensorTransform = Callable[[str, np.ndarray], np.ndarray]
"""(HF tensor name, float32 weights) -> weights; applied before the llama.cpp layout."""

AddTokenizer = Callable[[Any], None]
"""Adds the `tokenizer.*` keys to a gguf.GGUFWriter (gguf is imported lazily)."""


class UnsupportedModel(InvalidArgument):
    """The directory holds a model this converter cannot turn into a llama.cpp GGUF."""


def _unsupported(model_dir: Path, problem: str) -> UnsupportedModel:
    return UnsupportedModel(
        f"{model_dir}: {problem}. The built-in converter handles LlamaForCausalLM checkpoints in "
        "safetensors; convert this one with llama.cpp's convert_hf_to_gguf.py "
        "(https://github.com/ggml-org/llama.cpp) and pass the .gguf file to --draft-model."
    )


@dataclass(frozen=True)
class LlamaHParams:
    """The config.json fields that llama.cpp's `llama` architecture needs."""

    vocab_size: int
    context_length: int
    embedding_length: int
    block_count: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    head_dim: int
    rms_norm_eps: float
    rope: dict  # rope_type ("default", "linear" or "llama3"), rope_theta and the type's settings
    tie_word_embeddings: bool

    @classmethod
    def read(cls, model_dir: Path) -> LlamaHParams:
        """Parses model_dir/config.json; raises UnsupportedModel for anything but a Llama."""
        config_file = Path(model_dir) / "config.json"
        if not config_file.is_file():
            raise _unsupported(model_dir, "no config.json, so not a Hugging Face model directory")
        config = json.loads(config_file.read_text())
        architectures = config.get("architectures") or [config.get("model_type", "unknown")]
        if not set(architectures) & set(SUPPORTED_ARCHITECTURES):
            raise _unsupported(model_dir, f"architecture {', '.join(map(str, architectures))} is not supported")
        if config.get("hidden_act", "silu") != "silu":  # llama.cpp's llama graph hard-codes SiLU
            raise _unsupported(model_dir, f"activation {config['hidden_act']!r} is not supported")
        if config.get("quantization_config"):
            method = config["quantization_config"].get("quant_method", "unknown")
            raise _unsupported(model_dir, f"quantized checkpoints ({method}) are not supported")
        rope = _rope_parameters(config)
        if rope["rope_type"] not in ROPE_TYPES:
            raise _unsupported(model_dir, f"RoPE scaling {rope['rope_type']!r} is not supported")
        heads = config["num_attention_heads"]
        return cls(
            vocab_size=config["vocab_size"],
            context_length=config.get("max_position_embeddings", 2048),
            embedding_length=config["hidden_size"],
            block_count=config["num_hidden_layers"],
            feed_forward_length=config["intermediate_size"],
            head_count=heads,
            head_count_kv=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope=rope,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def add_to(self, writer) -> None:
        import gguf

        writer.add_vocab_size(self.vocab_size)
        writer.add_context_length(self.context_length)
        writer.add_embedding_length(self.embedding_length)
        writer.add_block_count(self.block_count)
        writer.add_feed_forward_length(self.feed_forward_length)
        writer.add_head_count(self.head_count)
        writer.add_head_count_kv(self.head_count_kv)
        writer.add_key_length(self.head_dim)
        writer.add_value_length(self.head_dim)
        writer.add_rope_dimension_count(self.head_dim)
        writer.add_rope_freq_base(float(self.rope["rope_theta"]))
        writer.add_layer_norm_rms_eps(self.rms_norm_eps)
        if self.rope["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(self.rope["factor"]))

    def rope_freq_factors(self) -> np.ndarray | None:
        """Llama 3.1-style RoPE scaling as llama.cpp takes it: per-frequency divisors ([head_dim / 2]).

        Same as transformers' `_compute_llama3_parameters`: long wavelengths are slowed by
        `factor`, short ones kept, the band between interpolated smoothly.
        """
        if self.rope["rope_type"] != "llama3":
            return None
        rope = self.rope
        factor = float(rope["factor"])
        low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
        old_context = float(rope.get("original_max_position_embeddings", 8192))
        exponents = np.arange(0, self.head_dim, 2, dtype=np.float32) / self.head_dim
        wavelengths = 2 * math.pi * np.float32(rope["rope_theta"]) ** exponents
        smooth = (old_context / wavelengths - low) / (high - low)
        divisors = 1 / ((1 - smooth) / factor + smooth)
        divisors = np.where(wavelengths < old_context / high, 1.0, divisors)
        divisors = np.where(wavelengths > old_context / low, factor, divisors)
        return divisors.astype(np.float32)


def _rope_parameters(config: dict) -> dict:
    """transformers 5 keeps RoPE settings in `rope_parameters`; older configs use `rope_theta`
    and `rope_scaling` (whose type key was once called `type`)."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    rope["rope_type"] = rope.get("rope_type") or rope.get("type") or "default"
    return rope


@dataclass(frozen=True)
class StoredTensor:
    """One tensor inside a safetensors file, read on demand through a memory map."""

    file: Path
    offset: int
    dtype: str  # safetensors' name: F32, F16 or BF16
    shape: tuple[int, ...]

    def load(self) -> np.ndarray:
        """The tensor as float32 (a bfloat16 is the top half of a float32, so it widens exactly)."""
        raw = np.memmap(self.file, dtype=_STORED_DTYPES[self.dtype], mode="r", offset=self.offset, shape=self.shape)
        if self.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return np.array(raw, dtype=np.float32)


def stored_tensors(model_dir: Path) -> dict[str, StoredTensor]:
    """Every tensor of the checkpoint, by HF name: model.safetensors or the shards its index lists."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise _unsupported(model_dir, "no model.safetensors (weights in other formats need torch to read)")
    tensors = {}
    for name in files:
        path = model_dir / name
        with open(path, "rb") as f:  # safetensors: u64 header size, JSON header, then raw data
            header_size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_size))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            if meta["dtype"] not in _STORED_DTYPES:
                raise _unsupported(model_dir, f"tensor {key} is stored as {meta['dtype']}")
            start = 8 + header_size + meta["data_offsets"][0]
            tensors[key] = StoredTensor(path, start, meta["dtype"], tuple(meta["shape"]))
    return tensors


def gguf_tensor_name(hf_name: str) -> str | None:
    """llama.cpp's name for an HF Llama tensor; None for buffers llama.cpp recomputes.

    Raises KeyError for a tensor the llama architecture has no place for.
    """
    if hf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[hf_name]
    parts = hf_name.split(".")
    if parts[-1] == "inv_freq":  # RoPE frequencies saved by old checkpoints
        return None
    module = ".".join(parts[3:-1])
    if parts[:2] != ["model", "layers"] or parts[-1] not in ("weight", "bias") or module not in BLOCK_TENSORS:
        raise KeyError(hf_name)
    return f"blk.{int(parts[2])}.{BLOCK_TENSORS[module]}.{parts[-1]}"


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorders Q/K rows (or bias entries) from HF's rotate-half RoPE layout to GGML's.

    HF rotates dimension i with i + head_dim/2; GGML rotates adjacent pairs (2i, 2i + 1).
    Same as `LlamaModel.permute` in llama.cpp's convert_hf_to_gguf.py; `n_head` is the head
    count of the projection (the KV heads for K).
    """
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@dataclass(frozen=True)
class _PlannedTensor:
    name: str  # llama.cpp's name
    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]  # float32, already in llama.cpp's layout


def _plan_tensors(model_dir: Path, hp: LlamaHParams, dtype: str,
                  transform: TensorTransform | None) -> list[_PlannedTensor]:
    """What to write, in HF-name order (so a seeded `transform` always sees the same sequence)."""
    stored = stored_tensors(model_dir)
    plan = []
    for hf_name in sorted(stored):
        try:
            name = gguf_tensor_name(hf_name)
        except KeyError:
            raise _unsupported(model_dir, f"tensor {hf_name} has no place in llama.cpp's llama architecture") from None
        if name is None or (name == "output.weight" and hp.tie_word_embeddings):
            continue  # tied: llama.cpp reuses token_embd as the output projection
        n_head = {"attn_q": hp.head_count, "attn_k": hp.head_count_kv}.get(name.split(".")[-2])

        def load(tensor=stored[hf_name], hf_name=hf_name, n_head=n_head) -> np.ndarray:
            data = tensor.load()
            if transform is not None:
                data = transform(hf_name, data)
            return permute_qk(data, n_head) if n_head else data

        shape = stored[hf_name].shape
        # Norms and biases stay F32 as in llama.cpp's converter: tiny, and precision-sensitive.
        out_dtype = np.dtype(np.float16 if dtype == "f16" and len(shape) == 2 else np.float32)
        plan.append(_PlannedTensor(name, shape, out_dtype, load))
    factors = hp.rope_freq_factors()
    if factors is not None:
        plan.append(_PlannedTensor("rope_freqs.weight", factors.shape, np.dtype(np.float32), lambda: factors))
    return plan


def write_llama_gguf(model_dir: str | Path, out_path: str | Path, add_tokenizer: AddTokenizer, *,
                     dtype: str = "f16", transform: TensorTransform | None = None, vocab_only: bool = False,
                     name: str | None = None) -> Path:
    """Writes a saved LlamaForCausalLM as a GGUF of llama.cpp's `llama` architecture.

    Tensors stream one at a time (each read, converted, written, freed), so converting needs
    little memory beyond one tensor. `vocab_only` writes the metadata alone: enough for
    llama.cpp to load the tokenizer.
    """
    import gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)  # it logs every file it writes at INFO
    _check_dtype(dtype)
    model_dir, out_path = Path(model_dir), Path(out_path)
    hp = LlamaHParams.read(model_dir)
    plan = [] if vocab_only else _plan_tensors(model_dir, hp, dtype, transform)
    writer = gguf.GGUFWriter(out_path, "llama")
    try:
        writer.add_name(name or model_dir.name)
        hp.add_to(writer)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        add_tokenizer(writer)
        for tensor in plan:
            nbytes = math.prod(tensor.shape) * tensor.dtype.itemsize
            writer.add_tensor_info(tensor.name, tensor.shape, tensor.dtype, nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in plan:
            data = np.ascontiguousarray(tensor.load(), dtype=tensor.dtype)
            if not np.isfinite(data).all():
                raise InvalidArgument(f"{model_dir}: {tensor.name} has values that are not finite as "
                                      f"{tensor.dtype} (convert with --draft-dtype f32)")
            writer.write_tensor_data(data)
    finally:
        writer.close()
    return out_path


def convert(model_dir: str | Path, out_path: str | Path, *, tokenize_gguf: GgufTokenizer,
            dtype: str = "f16") -> Path:
    """Converts an HF Llama directory to `out_path`, with the HF tokenizer's vocabulary.

    `tokenize_gguf(path, texts)` tokenizes with the vocabulary of a GGUF file (llama.cpp's
    tokenizer, through edge/llama_drafter.py), or returns None when llama.cpp refuses the file.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    hp = LlamaHParams.read(model_dir)
    scratch = out_path.with_name(out_path.name + ".vocab")

    def tokenize_with(add_tokenizer: AddTokenizer, texts: list[str]) -> list[list[int]] | None:
        try:
            write_llama_gguf(model_dir, scratch, add_tokenizer, vocab_only=True)
            return tokenize_gguf(scratch, texts)
        finally:
            scratch.unlink(missing_ok=True)

    try:
        vocab = choose_vocab(model_dir, hp.vocab_size, tokenize_with)
    except TokenizerNotConvertible as exc:
        raise UnsupportedModel(
            f"{model_dir}: {exc}. llama.cpp's convert_hf_to_gguf.py may still make a GGUF of this model; "
            "a hybrid draft's vocabulary must equal its target's, id by id."
        ) from None
    return write_llama_gguf(model_dir, out_path, vocab.add_to, dtype=dtype)


def cached_gguf(model_dir: str | Path, *, tokenize_gguf: GgufTokenizer, dtype: str = "f16") -> Path:
    """The GGUF conversion of an HF model directory: converted on first use, then reused.

    Cached under <model cache>/drafts, keyed by the directory's resolved path and the size and
    mtime of its config, weight and tokenizer files. When they change, the next use converts
    again and removes the stale conversion.
    """
    model_dir = Path(model_dir).resolve()
    LlamaHParams.read(model_dir)  # refuse an unsupported model before any work
    _check_dtype(dtype)
    cache_dir = model_cache_root() / "drafts"
    prefix = f"{model_dir.name}-{_digest(str(model_dir))[:8]}-{dtype}-"
    path = cache_dir / f"{prefix}{_digest(_cache_inputs(model_dir))[:12]}.gguf"
    if path.is_file():
        log.debug("using the cached conversion %s", path)
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("first use of %s: converting it to a %s GGUF for llama.cpp (one-time; cached in %s)...",
             model_dir, dtype.upper(), cache_dir)
    started = time.monotonic()
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    try:
        convert(model_dir, partial, tokenize_gguf=tokenize_gguf, dtype=dtype)
        os.replace(partial, path)  # atomic: a concurrent reader sees no file or a whole one
    finally:
        partial.unlink(missing_ok=True)
    for stale in cache_dir.glob(f"{prefix}*.gguf"):
        if stale != path:
            stale.unlink(missing_ok=True)
    log.info("converted %s in %.1fs (%.0f MB)", model_dir.name, time.monotonic() - started,
             path.stat().st_size / 1e6)
    return path


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InvalidArgument(f"the converted weight type must be one of {', '.join(DTYPES)}, not {dtype!r}")


def _cache_inputs(model_dir: Path) -> str:
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in CACHE_KEY_SUFFIXES)
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return json.dumps([CONVERTER_VERSION, stats])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()

