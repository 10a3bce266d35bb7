"""Per-session limits the cloud enforces (INVALID_ARGUMENT beyond them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SessionLimits:
    max_prompt_tokens: int = 8192
    max_draft_tokens: int = 64  # the anchor included
    max_new_tokens: int = 4096
    max_draft_top_k: int = 64
    max_stop_strings: int = 16
    max_stop_string_bytes: int = 256
    max_stop_tokens: int = 64
    # Longest sequence (prompt + generated) a session may reach; 0 = the model's own context.
    # Below the model's, it bounds each session's KV cache.
    max_context_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_draft_tokens", "max_new_tokens", "max_draft_top_k",
                     "max_stop_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_context_tokens < 0:
            raise ValueError("max_context_tokens must be >= 0 (0: the model's context)")

    def context_for(self, model_max_context: int) -> int:
        """The longest sequence a session of a model with this native context may reach."""
        if self.max_context_tokens:
            return min(self.max_context_tokens, model_max_context)
        return model_max_context
