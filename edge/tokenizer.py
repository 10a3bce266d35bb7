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

The target's tokenizer, for a draft of another vocabulary, comes from local files the same way
(--target-tokenizer, or --model for an embedded cloud), or else from the cloud itself
(`cloud_tokenizer`: the GetTokenizer RPC, checked against the fingerprint Info advertised, and
cached by that fingerprint, so it is fetched once per target tokenizer).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import hashlib
import mmap
import re
import struct
import sys
import zlib
from collections.abc import AsyncIterable
from pathlib import Path

from common.errors import FailedPrecondition
from common.model_paths import model_cache_root, publish_dir
from common.text_tokenizer import SPEC_FILE, TextTokenizer, TokenizerSpec
from common.wire import ModelInfo, TokenizerChunk

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


FETCHED_FILES = ("tokenizer.json", SPEC_FILE)
"""The files GetTokenizer sends: nothing else is written, whatever a cloud sends."""
MAX_FETCHED_BYTES = 1 << 30
"""Refuses a tokenizer beyond this (Gemma's 262k vocabulary is 14 MB): a broken cloud cannot fill memory or disk."""


def fetched_folder(fingerprint: str) -> Path:
    """Where a tokenizer fetched from a cloud is cached: keyed by its fingerprint."""
    return model_cache_root() / "tokenizers" / ("cloud-" + re.sub(r"[^A-Za-z0-9_.-]", "-", fingerprint))


async def cloud_tokenizer(chunks: AsyncIterable[TokenizerChunk], info: ModelInfo, draft_name: str) -> TextTokenizer:
    """The cloud model's tokenizer: from the cache, else from `chunks` (GetTokenizer's stream; only
    iterated on a cache miss), whose files must give the fingerprint `info` advertises.
    FailedPrecondition naming both models when they do not, or cannot be read."""
    folder = fetched_folder(info.tokenizer_fingerprint)
    if not (folder / SPEC_FILE).is_file():
        def refuse(why: str) -> FailedPrecondition:
            return FailedPrecondition(
                f"the draft model {draft_name!r} has another vocabulary than the cloud model {info.model_name!r}, "
                f"and the cloud's tokenizer could not be used: {why}; pass the target's files with "
                "--target-tokenizer (or pick a draft model of the target's tokenizer family)")

        try:
            files = await _receive(chunks, info)
        except FailedPrecondition as exc:
            raise refuse(str(exc)) from None
        try:
            await asyncio.to_thread(publish_dir, folder, lambda partial: _write_checked(partial, files, info))
        except FailedPrecondition as exc:
            raise refuse(str(exc)) from None
    return await asyncio.to_thread(_read, folder)


async def _receive(chunks: AsyncIterable[TokenizerChunk], info: ModelInfo) -> dict[str, bytearray]:
    """The files of a GetTokenizer stream, each whole and in order, with a note on stderr on the way."""
    files: dict[str, bytearray] = {}
    sizes: dict[str, int] = {}
    async for chunk in chunks:
        if not files and chunk.tokenizer_fingerprint != info.tokenizer_fingerprint:
            raise FailedPrecondition(f"it sent the tokenizer of fingerprint {chunk.tokenizer_fingerprint or '(none)'}, "
                                     f"not {info.tokenizer_fingerprint} (another replica's model?)")
        if chunk.file_name not in FETCHED_FILES:
            raise FailedPrecondition(f"it sent an unexpected file {chunk.file_name!r}")
        if chunk.file_name not in files:
            if not files:
                print(f"tandem: fetching the tokenizer of the cloud model {info.model_name} "
                      f"({_size(chunk.file_size)}, once; cached under {fetched_folder('').parent})",
                      file=sys.stderr, flush=True)
            files[chunk.file_name], sizes[chunk.file_name] = bytearray(), chunk.file_size
        data = files[chunk.file_name]
        if chunk.offset != len(data) or chunk.file_size != sizes[chunk.file_name] \
                or sum(sizes.values()) > MAX_FETCHED_BYTES:
            raise FailedPrecondition(f"{chunk.file_name} arrived out of order or beyond {MAX_FETCHED_BYTES} bytes")
        room = chunk.file_size - len(data)
        try:  # never more than the file's room, however the chunk inflates
            piece = zlib.decompressobj().decompress(chunk.data, room + 1) if chunk.zlib else chunk.data
        except zlib.error as exc:
            raise FailedPrecondition(f"a chunk of {chunk.file_name} does not decompress ({exc})") from None
        if len(piece) > room:
            raise FailedPrecondition(f"{chunk.file_name} arrived beyond its size")
        data += piece
    incomplete = [name for name in FETCHED_FILES if name not in files or len(files[name]) != sizes[name]]
    if incomplete:
        raise FailedPrecondition(f"the stream ended before {', '.join(incomplete)} was complete")
    return files


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _write_checked(folder: Path, files: dict[str, bytes], info: ModelInfo) -> None:
    """Writes the fetched files into `folder` and proves they give info's fingerprint, computed
    from the files themselves (the spec's own claim is not trusted); then records it in the spec."""
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_bytes(files["tokenizer.json"])
    try:
        spec = dataclasses.replace(TokenizerSpec.from_json(bytes(files[SPEC_FILE]).decode()), fingerprint=None)
        fingerprint = TextTokenizer.from_file(folder / "tokenizer.json", spec).fingerprint
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the files, the answer is the same
        raise FailedPrecondition(f"its files do not read as a tokenizer ({type(exc).__name__}: {exc})") from None
    if fingerprint != info.tokenizer_fingerprint:
        raise FailedPrecondition(f"its files give the fingerprint {fingerprint}, not the advertised "
                                 f"{info.tokenizer_fingerprint}")
    (folder / SPEC_FILE).write_text(dataclasses.replace(spec, fingerprint=fingerprint).to_json())


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

