"""Where a session's bytes go: HTTP/2 frames on the relayed TCP stream, tallied by type.

gRPC runs over HTTP/2 (RFC 9113 §4.1): every frame is a 9-byte header (24-bit length,
type, flags, stream id) plus its payload, and the client opens the connection with a
24-byte preface. A relay tap feeds the bytes of each direction through a parser that only
reads those headers, so the tally costs next to nothing and changes nothing on the wire.
"""

from __future__ import annotations

import threading
from collections import Counter

FRAME_TYPES = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST_STREAM", 4: "SETTINGS", 5: "PUSH_PROMISE",
               6: "PING", 7: "GOAWAY", 8: "WINDOW_UPDATE", 9: "CONTINUATION"}
CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_BYTES = 9


class _FrameParser:
    """Splits one direction of one connection into frames; keeps partial frames across chunks."""

    def __init__(self, expect_preface: bool):
        self._skip = len(CLIENT_PREFACE) if expect_preface else 0
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[str, int]]:
        """(frame type, frame size with header) for every frame completed by `data`."""
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        self._buffer += data
        frames = []
        while len(self._buffer) >= FRAME_HEADER_BYTES:
            size = FRAME_HEADER_BYTES + int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < size:
                break
            frames.append((FRAME_TYPES.get(self._buffer[3], f"type {self._buffer[3]}"), size))
            self._buffer = self._buffer[size:]
        return frames


class FrameTally:
    """A relay tap: bytes and frame counts per (direction, frame type) since the last reset."""

    def __init__(self):
        self._parsers: dict[tuple[int, str], _FrameParser] = {}
        self._lock = threading.Lock()  # the relay thread feeds, the bench thread reads
        self.bytes: Counter[str] = Counter()
        self.frames: Counter[str] = Counter()

    def __call__(self, connection: int, direction: str, data: bytes) -> None:
        parser = self._parsers.setdefault((connection, direction), _FrameParser(direction == "up"))
        with self._lock:
            for kind, size in parser.feed(data):
                self.bytes[f"{direction} {kind}"] += size
                self.frames[f"{direction} {kind}"] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"bytes": dict(self.bytes), "frames": dict(self.frames)}

    def reset(self) -> None:
        with self._lock:
            self.bytes.clear()
            self.frames.clear()
