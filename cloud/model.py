"""The target model: the one module that touches torch and transformers.

It exposes what speculative verification needs and nothing more: run tokens through the
model on top of a session's KV cache and return their logits, crop a cache back after a
rejection, and describe the model (vocab, end ids, BOS/EOS rules, chat template, tokenizer
fingerprint: see common/text_tokenizer.py, shared with the edge).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from common.model_paths import default_gguf_path, model_cache_root, publish_dir
from common.special_tokens import SpecialTokens, id_list
from common.text_tokenizer import TextTokenizer

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"  # "auto" picks cuda when available
    dtype: str = "auto"  # "auto": float32 on CPU, bfloat16 on CUDA
    threads: int = 0  # torch intra-op threads; 0 = the CPUs this process may run on


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TargetModel:
    """A causal LM plus tokenizer, ready for cached, block-wise forward passes."""

    def __init__(self, model, tokenizer, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        config = model.config
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.text = TextTokenizer(tokenizer, id_list(getattr(model.generation_config, "eos_token_id", None)))
        self.eos_token_ids = self.text.end_ids
        self.fingerprint = self.text.fingerprint
        self.chat_template = self.text.chat_template
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        element = torch.finfo(model.dtype).bits // 8
        self.kv_bytes_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * element

    @classmethod
    def load(cls, path: str | None, options: LoadOptions = LoadOptions()) -> TargetModel:
        """Loads an HF model directory or a GGUF file (None: the default SmolLM2 GGUF)."""
        threads = options.threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
        device = resolve_device(options.device)
        dtype = _DTYPES.get(options.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        source = Path(path) if path else default_gguf_path()
        model_dir = _safetensors_copy(source) if source.suffix == ".gguf" else source
        started = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        name = source.stem if source.suffix == ".gguf" else source.name
        log.info("loaded target %s (%s, %s, %d torch threads) in %.1fs", name, device, dtype, threads,
                 time.monotonic() - started)
        return cls(model, tokenizer, name)

    def tokenize(self, text: str) -> list[int]:
        """The text's ids alone (nothing added): for tests and prompts assembled from parts."""
        return self.text.tokenize(text)

    def encode(self, text: str) -> list[int]:
        """A raw prompt as the tokenizer encodes it by default (BOS/EOS per its rules)."""
        return self.text.encode(text)

    @property
    def special(self) -> SpecialTokens:
        return self.text.special

    def token_bytes(self, token_id: int) -> bytes:
        """The token's text bytes; special tokens render as nothing, as on the edge (llama.cpp)."""
        return self._token_bytes[token_id]

    @functools.cached_property
    def _token_bytes(self) -> list[bytes]:
        return self.text.token_bytes_table(self.vocab_size)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    @staticmethod
    def cache_length(cache: DynamicCache) -> int:
        return cache.get_seq_length()

    @staticmethod
    def copy_cache(cache: DynamicCache) -> DynamicCache:
        """An independent copy (a prefix-cache snapshot, or a session's cache made from one)."""
        return copy.deepcopy(cache)

    @torch.inference_mode()
    def forward(self, cache: DynamicCache, token_ids: Sequence[int], keep_logits: int) -> np.ndarray:
        """Appends token_ids to the cache; returns the last keep_logits rows of logits.

        Returns [keep_logits, vocab] float32 (HF's greedy search also takes its argmax in float32).
        """
        assert 1 <= keep_logits <= len(token_ids), (keep_logits, len(token_ids))
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=keep_logits)
        return out.logits[0].float().cpu().numpy()

    def free_memory_bytes(self) -> int:
        """Memory still free on the model's device (for the default KV-cache budget)."""
        if self.device.type == "cuda":
            return int(torch.cuda.mem_get_info(self.device)[0])
        try:
            with open("/proc/meminfo") as meminfo:
                fields = dict(line.split(":", 1) for line in meminfo)
            return int(fields["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    def warmup(self) -> None:
        """One tiny forward pass, so the first request does not pay torch's lazy init (~2 s)."""
        self.forward(self.new_cache(), self.tokenize("Hello") or [0], 1)

    @staticmethod
    def crop(cache: DynamicCache, length: int) -> None:
        """Drops cached positions from `length` on (transformers 5 crops by a negative count)."""
        excess = cache.get_seq_length() - length
        assert excess >= 0, (cache.get_seq_length(), length)
        if excess:
            cache.crop(-excess)


def _safetensors_copy(gguf: Path) -> Path:
    """A transformers copy of a GGUF model, made once and cached.

    Loading a GGUF in transformers dequantizes it (~15 s for 135M params); the safetensors
    copy then loads in well under a second.
    """
    target = model_cache_root() / "targets" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / "config.json").exists():
        return target
    log.info("first start: converting %s for transformers (one-time, ~15-60 s)...", gguf.name)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    publish_dir(target, write)
    log.info("cached %s in %.1fs", target, time.monotonic() - started)
    return target
