"""Per-session limits the cloud enforces (INVALID_ARGUMENT beyond them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SessionLimits:
    max_prompt_tokens: int = 8192
    max_draft_tokens: int = 64
    max_new_tokens: int = 4096
    max_draft_top_k: int = 64
    max_stop_strings: int = 16
    max_stop_string_bytes: int = 256
