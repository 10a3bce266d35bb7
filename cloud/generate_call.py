"""What a Generate call (the cloud-only baseline) adds to a session: its request becomes a
SessionOpen, and each step of the scheduler becomes a GenerateStep message.
"""

from __future__ import annotations

from cloud.scheduler import Scheduler, Token
from cloud.target_engine import TargetEngine
from common.detok import IncrementalDetokenizer
from common.errors import InvalidArgument
from common.wire import GenerateRequest, GenerateStep, SessionOpen


async def session_open(request: GenerateRequest, model: TargetEngine, scheduler: Scheduler) -> SessionOpen:
    """The session a Generate call runs: the prompt (prompt_text tokenized on the model thread),
    checked by the target's own tokenizer, no draft."""
    prompt = request.prompt_token_ids
    if request.prompt_text and prompt:
        raise InvalidArgument("give prompt_token_ids or prompt_text, not both")
    if request.prompt_text and request.resume_token_ids:
        raise InvalidArgument("resume_token_ids needs prompt_token_ids (the tokens follow them)")
    if request.prompt_text:
        prompt = await scheduler.run(model.encode, request.prompt_text)
    return request.session_open(tokenizer_fingerprint=model.fingerprint, draft_model_name="(cloud-only)",
                                prompt_token_ids=prompt)


class StepMessages:
    """Turns a Generate session's tokens into its GenerateStep messages: the text each token
    completes (when asked for), the replica on the first message, forward passes on the last."""

    def __init__(self, model: TargetEngine, return_text: bool, replica: str):
        self.detok = IncrementalDetokenizer(model.token_bytes) if return_text else None
        self.replica = replica

    def step(self, token: Token, forward_passes: int) -> GenerateStep:
        text = self.detok.push([token.token_id]) if self.detok and token.token_id is not None else ""
        if self.detok and token.finish_reason:
            text += self.detok.flush()
        replica, self.replica = self.replica, ""
        return GenerateStep(token.position, token.token_id, token.finish_reason, text, replica=replica,
                            forward_passes=forward_passes if token.finish_reason else 0, logprob=token.logprob)
