"""GetTokenizer's work: the target's tokenizer as files, made once, checked, served in chunks.

An edge whose draft has another vocabulary moves text between the two token spaces, and for
that it needs the target's tokenizer; with a remote cloud it has no local copy, so the cloud
serves the files the edge's torch-free TextTokenizer reads (tokenizer.json and SPEC_FILE). They
are made on first request, on a worker thread (Gemma's tokenizer.json is 14 MB and its
fingerprint walks 262k pieces: about a second, never on the event loop), and only after the
files are proven to give the very fingerprint Info advertises: an edge then checks the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from cloud.target_engine import TargetEngine
from common.errors import FailedPrecondition
from common.text_tokenizer import SPEC_FILE, TextTokenizer, TokenizerSpec
from common.wire import TokenizerChunk

CHUNK_BYTES = 1 << 20
"""Uncompressed bytes per chunk unless the edge asks for less (gRPC's default message limit is 4 MiB)."""
MIN_CHUNK_BYTES = 4096
"""An edge asking for smaller chunks gets these (a 14 MB file in 1-byte messages would be a flood)."""


class TokenizerFiles:
    """The target's tokenizer files, made on first use, and their chunks as sent, kept (Gemma's:
    14 MB, 5 MB compressed; compressing them again for every edge would take ~0.7 s each)."""

    def __init__(self, engine: TargetEngine):
        self.engine = engine
        self._files: dict[str, bytes] | None = None
        self._chunks: dict[tuple[int, bool], list[TokenizerChunk]] = {}
        self._lock = asyncio.Lock()  # concurrent first requests make them once

    async def chunks(self, max_chunk_bytes: int = 0, accept_zlib: bool = False) -> list[TokenizerChunk]:
        key = (min(max(max_chunk_bytes or CHUNK_BYTES, MIN_CHUNK_BYTES), CHUNK_BYTES), accept_zlib)
        async with self._lock:
            if self._files is None:
                self._files = await asyncio.to_thread(checked_files, self.engine)
            files, fingerprint = self._files, self.engine.fingerprint
            if key in self._chunks:
                return self._chunks[key]
            chunks = await asyncio.to_thread(lambda: list(split(files, fingerprint, *key)))
            if key[0] == CHUNK_BYTES:  # what edges ask for; other sizes are not kept
                self._chunks[key] = chunks
            return chunks


def checked_files(engine: TargetEngine) -> dict[str, bytes]:
    """engine.tokenizer_files(), with the fingerprint they give written into the spec, or
    FailedPrecondition when the engine serves none or they do not give its fingerprint."""
    make = getattr(engine, "tokenizer_files", None)
    if make is None:
        raise FailedPrecondition(f"the cloud model {engine.name!r} cannot serve its tokenizer: give the edge its "
                                 "files with --target-tokenizer")
    files = dict(make())
    spec = TokenizerSpec.from_json(files[SPEC_FILE].decode())
    with tempfile.TemporaryDirectory(prefix="tandem-tokenizer-") as folder:
        (Path(folder) / "tokenizer.json").write_bytes(files["tokenizer.json"])
        fingerprint = TextTokenizer.from_file(Path(folder) / "tokenizer.json",
                                              dataclasses.replace(spec, fingerprint=None)).fingerprint
    if fingerprint != engine.fingerprint:
        raise FailedPrecondition(f"the tokenizer files of the cloud model {engine.name!r} give the fingerprint "
                                 f"{fingerprint}, not the model's {engine.fingerprint}: give the edge the model's "
                                 "files with --target-tokenizer")
    files[SPEC_FILE] = dataclasses.replace(spec, fingerprint=fingerprint).to_json().encode()
    return files


def split(files: dict[str, bytes], fingerprint: str, chunk_bytes: int, compress: bool) -> Iterator[TokenizerChunk]:
    """The files as chunks of at most chunk_bytes (uncompressed), in order; the first carries the fingerprint."""
    first = True
    for name, data in files.items():
        for offset in range(0, max(len(data), 1), chunk_bytes):
            piece = data[offset:offset + chunk_bytes]
            packed = zlib.compress(piece, 6) if compress else piece
            use_zlib = compress and len(packed) < len(piece)
            yield TokenizerChunk(file_name=name, offset=offset, file_size=len(data),
                                 data=packed if use_zlib else piece, zlib=use_zlib,
                                 tokenizer_fingerprint=fingerprint if first else "")
            first = False
