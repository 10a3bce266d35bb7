"""Per-session limits the cloud enforces (INVALID_ARGUMENT beyond them)."""

from __future__ import annotations

from dataclasses import dataclass

from common import settings
from common.checks import check_range
from common.settings import setting
from common.stop import MAX_STOP_STRINGS

LIMITS = "limits (beyond them: INVALID_ARGUMENT, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED)"


@dataclass(frozen=True)
class SessionLimits:
    max_prompt_tokens: int = setting(8192, "longest prompt accepted (default %(default)s)",
                                     env="MAX_PROMPT_TOKENS", group=LIMITS, low=1)
    max_draft_tokens: int = setting(64, "largest draft block accepted, its anchor included (default %(default)s)",
                                    env="MAX_DRAFT_TOKENS", group=LIMITS, low=1)
    max_new_tokens: int = setting(4096, "most tokens one session may generate (default %(default)s)",
                                  env="MAX_NEW_TOKENS", group=LIMITS, low=1)
    max_hint_tokens: int = setting(16, "most of an edge's guesses (DecodeHint) held per session while the cloud "
                                       "decodes alone; 0 takes none (default %(default)s)",
                                   env="MAX_HINT_TOKENS", group=LIMITS, low=0)
    max_draft_top_k: int = 64
    max_stop_strings: int = MAX_STOP_STRINGS
    max_stop_string_bytes: int = 256
    max_logit_bias: int = 1024  # logit_bias entries in one request
    max_stop_tokens: int = setting(64, "most stop token ids in one request (default %(default)s)",
                                   env="MAX_STOP_TOKENS", group=LIMITS, low=1)
    # Below the model's own context, it bounds each session's KV cache.
    max_context_tokens: int = setting(0, "longest sequence (prompt + generated) a session may reach; "
                                         "0 = the model's context", env="MAX_CONTEXT_TOKENS", group=LIMITS, low=0)

    def __post_init__(self) -> None:
        settings.check_ranges(self)
        for name in ("max_draft_top_k", "max_stop_strings", "max_stop_string_bytes", "max_logit_bias"):  # not flags
            check_range(getattr(self, name), name, 1)

    def context_for(self, model_max_context: int) -> int:
        """The longest sequence a session of a model with this native context may reach."""
        if self.max_context_tokens:
            return min(self.max_context_tokens, model_max_context)
        return model_max_context
