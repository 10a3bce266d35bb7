"""How the edge drafts: block length, blocks in flight, confidence, adaptivity and when the cloud
decodes alone. Declared once (common/settings.py): flags, defaults and TANDEM_* variables.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.settings import setting

SPECULATION = "speculation"


@dataclass
class SpeculationConfig:
    # The adaptive policy picks fewer when that pays.
    draft_tokens: int = setting(32, "most drafted tokens per block (default %(default)s)", env="DRAFT_TOKENS",
                                group=SPECULATION)
    max_in_flight: int = setting(4, "most draft blocks awaiting a verdict at once; 1 = lock-step "
                                    "(default %(default)s)", env="MAX_IN_FLIGHT", group=SPECULATION)
    draft_top_k: int = 8  # sparse-q mode: candidates sent per drafted token
    min_confidence: float = setting(0.1, "end a block after a draft the draft model gives less probability "
                                         "(default %(default)s)", env="MIN_CONFIDENCE", group=SPECULATION)
    # Block length and depth from measurements (edge/draft_length.py).
    adaptive: bool = setting(True, "choose block length and blocks in flight per session from measured "
                                   "acceptance, draft speed and round trip; --no-adaptive drafts --draft-tokens "
                                   "per block with --max-in-flight blocks in flight (default %(default)s)",
                             negatable=True, group=SPECULATION)
    min_draft_tokens: int = setting(1, "fewest drafted tokens per block the adaptive policy picks "
                                       "(default %(default)s)", group=SPECULATION)
    # Never slower than cloud-only (edge/drafting_pays.py); part of the adaptive policy.
    cloud_decode: bool = setting(True, "while drafting does not pay (measured per session: acceptance, draft "
                                       "time, round trip, the cloud's time per token), let the cloud decode "
                                       "alone in the same session, and re-probe drafting from time to time; "
                                       "needs --adaptive (default %(default)s)",
                                 negatable=True, group=SPECULATION)
    decode_hints: bool = setting(True, "while the cloud decodes alone, send it the draft's guesses of what "
                                       "comes next, which it checks in its own steps without waiting for them; "
                                       "a draft of another family then starts each answer this way and drafts "
                                       "in blocks once that pays more (needs --cloud-decode; default %(default)s)",
                                 negatable=True, group=SPECULATION)
    # Adjust the draft's logits as the cloud adjusts the target's (the answer's grammar mask,
    # penalties, logit_bias: edge/draft_sampling.py's ServedLogits), so drafts follow them. Off only
    # to measure what that is worth.
    mask_draft: bool = True
    # Start the draft's prefill only once the cloud's first token is in, instead of alongside
    # the cloud's prefill: for an edge that shares its cores with the cloud (the embedded cloud),
    # where the two prefills would slow each other and so the first token. Not a flag: the
    # runtime sets it for an embedded cloud.
    defer_draft_prefill: bool = False
