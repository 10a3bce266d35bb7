"""The edge's tokenizer: the target's kind (transformers' pipeline), read with `tokenizers` alone.

llama.cpp and transformers do not always turn text into the same ids (SentencePiece's
prefix space after special tokens, for one), and the target's ids are the ones that count.
So the edge never tokenizes prompts with llama.cpp: it tokenizes with the pipeline transformers
builds for the draft (for a Hugging Face directory, from the directory's files; for a GGUF, from
its `tokenizer.*` keys, exactly as the cloud converts a GGUF target), and feeds the ids to
llama.cpp. transformers builds it once per draft (edge/tokenizer_conversion.py, the one edge
module that imports it); the result is cached as a tokenizer.json and its spec, keyed by the
content of the draft's tokenizer files (every draft with the same tokenizer shares one copy),
and every later start reads it with the `tokenizers` library in milliseconds, without torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import struct
import sys
from pathlib import Path

from common.model_paths import model_cache_root, publish_dir
from common.text_tokenizer import SPEC_FILE, TextTokenizer

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""GGUF value types with a fixed size (uint8 ... float64); 8 is a string, 9 an array."""
_STRING, _ARRAY = 8, 9

CACHE_FORMAT = b"tandem-tokenizer-files-2"
"""Part of every cache key: a new layout of the cached files gets new folders."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt",
                   "generation_config.json")
"""The files of a Hugging Face directory that can change how transformers tokenizes."""


def load_tokenizer(draft: str | Path) -> TextTokenizer:
    """The tokenizer of a draft model (an HF directory, or a GGUF file), as transformers builds it."""
    return _read(tokenizer_files(Path(draft)))


def cached_tokenizer(draft: str | Path) -> TextTokenizer | None:
    """The draft's tokenizer if its files were converted before (never imports transformers), else
    None (also for a file that is no GGUF: the caller's own loading says what is wrong with it)."""
    try:
        folder = _cache_folder(Path(draft))
    except (OSError, ValueError, struct.error):
        return None
    return _read(folder) if (folder / SPEC_FILE).is_file() else None


def tokenizer_files(draft: Path) -> Path:
    """The cached folder with the draft's tokenizer.json and spec, converted on first use."""
    target = _cache_folder(draft)
    if (target / SPEC_FILE).is_file():
        return target
    from edge.tokenizer_conversion import write_tokenizer_files  # transformers: this one time only

    return publish_dir(target, lambda folder: write_tokenizer_files(draft, folder))


def _cache_folder(draft: Path) -> Path:
    digest = hashlib.sha256(CACHE_FORMAT)
    digest.update(directory_digest(draft).encode() if draft.is_dir() else tokenizer_digest(draft).encode())
    return model_cache_root() / "tokenizers" / digest.hexdigest()[:24]


def _read(folder: Path) -> TextTokenizer:
    tokenizer = TextTokenizer.from_file(folder / "tokenizer.json")
    _return_freed_memory()
    return tokenizer


def _return_freed_memory() -> None:
    """Hands the heap that parsing tokenizer.json freed back to the OS (glibc keeps it otherwise:
    ~15 MB of a 49k vocabulary's ~30), so the edge's resident memory holds only what it uses."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)  # glibc; musl has no malloc_trim (AttributeError)


def directory_digest(model_dir: Path) -> str:
    """SHA-256 of the names and contents of a directory's TOKENIZER_FILES."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = model_dir / name
        if path.is_file():
            digest.update(b"%s\x00%d\x00" % (name.encode(), path.stat().st_size))
            digest.update(path.read_bytes())
    return digest.hexdigest()


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

