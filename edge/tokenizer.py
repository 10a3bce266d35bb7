"""The edge's tokenizer: the same kind as the target's (transformers), made from the draft's files.

llama.cpp and transformers do not always turn text into the same ids (SentencePiece's
prefix space after special tokens, for one), and the target's ids are the ones that count.
So the edge never tokenizes prompts with llama.cpp: it loads a transformers tokenizer from
the draft, tokenizes once, and feeds the ids to llama.cpp. For a Hugging Face directory that
is the directory's own tokenizer; for a GGUF it is transformers' conversion of the GGUF's
tokenizer, exactly as the cloud converts a GGUF target (cloud/model.py), cached by the
content of the GGUF's `tokenizer.*` keys (every GGUF with the same tokenizer shares one copy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import struct
import time
from pathlib import Path

from common.model_paths import model_cache_root, publish_dir
from common.special_tokens import id_list
from common.text_tokenizer import TextTokenizer

log = logging.getLogger(__name__)

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""GGUF value types with a fixed size (uint8 ... float64); 8 is a string, 9 an array."""
_STRING, _ARRAY = 8, 9


def load_tokenizer(draft: str | Path) -> TextTokenizer:
    """The transformers tokenizer of a draft model: an HF directory, or a GGUF file."""
    from transformers import AutoTokenizer

    path = Path(draft)
    source = path if path.is_dir() else gguf_tokenizer_dir(path)
    return TextTokenizer(AutoTokenizer.from_pretrained(source), _declared_eos_ids(source))


def gguf_tokenizer_dir(gguf: Path) -> Path:
    """A transformers tokenizer directory converted once from a GGUF's tokenizer and cached."""
    target = model_cache_root() / "tokenizers" / tokenizer_digest(gguf)[:24]
    if (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoTokenizer

    log.info("first use of %s's tokenizer: converting it for transformers (one-time)...", gguf.name)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    publish_dir(target, tokenizer.save_pretrained)
    log.info("cached the tokenizer in %s (%.1fs)", target, time.monotonic() - started)
    return target


def tokenizer_digest(gguf: Path) -> str:
    """SHA-256 of a GGUF's `tokenizer.*` key/value records, byte for byte.

    Walks the metadata section without loading values (a 262k-entry vocabulary takes ~0.1 s,
    where gguf.GGUFReader takes seconds).
    """
    digest = hashlib.sha256()
    with open(gguf, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            raise ValueError(f"{gguf} is not a GGUF file")
        (n_kv,) = struct.unpack_from("<Q", data, 16)  # after magic, version (u32), tensor count (u64)
        offset = 24
        for _ in range(n_kv):
            start = offset
            key, offset = _read_string(data, offset)
            (value_type,) = struct.unpack_from("<I", data, offset)
            offset = _skip_value(data, offset + 4, value_type)
            if key.startswith(b"tokenizer."):
                digest.update(data[start:offset])
    return digest.hexdigest()


def _read_string(data, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from("<Q", data, offset)
    return data[offset + 8:offset + 8 + length], offset + 8 + length


def _skip_value(data, offset: int, value_type: int) -> int:
    if value_type in _SCALAR_SIZES:
        return offset + _SCALAR_SIZES[value_type]
    if value_type == _STRING:
        return _read_string(data, offset)[1]
    if value_type != _ARRAY:
        raise ValueError(f"unknown GGUF value type {value_type}")
    item_type, count = struct.unpack_from("<IQ", data, offset)
    offset += 12
    if item_type in _SCALAR_SIZES:
        return offset + count * _SCALAR_SIZES[item_type]
    for _ in range(count):
        offset = _skip_value(data, offset, item_type)
    return offset


def _declared_eos_ids(model_dir: Path) -> list[int]:
    """The EOS ids in a model directory's generation_config.json, if it has one."""
    config = model_dir / "generation_config.json"
    if not config.is_file():
        return []
    return id_list(json.loads(config.read_text()).get("eos_token_id"))
