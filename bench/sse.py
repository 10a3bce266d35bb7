"""What the same answer costs as an OpenAI-style Server-Sent Events stream.

The bytes target compares hybrid's TCP bytes with the stream a chat app receives from an
OpenAI-compatible server: one `chat.completion.chunk` event per generated token, then a final
chunk with the finish reason, then `data: [DONE]`. The events are rendered exactly as
`tandem serve` renders them (edge/openai_api.py's ResponseBuilder), token by token as a server
that streams every token does. Only the event bytes count: HTTP headers, chunked-encoding
lines and TLS, which such a stream also pays, are left out, so the ratio is conservative.
"""

from __future__ import annotations

import json

from common.detok import IncrementalDetokenizer
from edge.openai_api import Params, ResponseBuilder


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def openai_sse_bytes(token_bytes, token_ids: list[int], finish_reason: str | None, prompt_tokens: int) -> int:
    """Bytes of the SSE events that stream `token_ids` one token per chunk."""
    params = Params(max_tokens=len(token_ids), temperature=0.0, top_p=1.0, top_k=0, seed=None, stop=(),
                    stream=True, include_usage=False, return_token_ids=False)
    builder = ResponseBuilder(True, "tandem", params, [0] * prompt_tokens)
    detok = IncrementalDetokenizer(token_bytes)
    total = 0
    for i, token in enumerate(token_ids):
        text = detok.push([token])
        if i == len(token_ids) - 1:
            text += detok.flush()
        total += len(_event(builder.chunk(text, [token], False)))
    # The last chunk as an OpenAI server sends it: the finish reason, no tandem extension.
    final = builder.chunk("", [], False)
    final["choices"][0].update(delta={}, finish_reason=finish_reason)
    return total + len(_event(final)) + len(b"data: [DONE]\n\n")
