"""`tandem chat`: an interactive terminal chat over the hybrid runtime.

Each answer streams as it is generated; the conversation is kept, so follow-up questions
work; after each answer a short stats line says how fast it came, how many tokens each cloud
round brought, and whether it ran hybrid or on the local model alone (with a notice when the
cloud was unreachable). /reset forgets the conversation, /quit or Ctrl-D leaves, Ctrl-C stops
the answer being written (and, at the prompt, leaves).

Offline-first (edge/offline.py): while the cloud is away the local model's text is provisional;
when the cloud returns mid-answer and rewrites it from some token on, a marker line says so and
the rewritten tail is printed again from there. An answer that ended while the cloud was away is
checked before the next message is answered (if the cloud is back by then): "verified exact", or
"differs from position N" followed by the cloud model's answer, which replaces it in the
conversation (see the README on why the next turn waits for that check).

Input is read by a small thread straight from the file descriptor, so the event loop stays
free while the user types: the engine keeps reconnecting to a lost cloud in the background.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading

from common.errors import InvalidArgument, TandemError
from common.extras import require_extra
from edge.config import EdgeConfig
from edge.engine import Generation, Mode

PROMPT = "you> "
HELP = "/reset clears the conversation, /quit leaves"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="an interactive chat in the terminal (streamed, multi-turn)",
        description=f"Chat with the model in the terminal: {HELP}; Ctrl-C stops an answer. A stats line "
                    "follows each answer (tokens/s, tokens per cloud round, hybrid or local). While the cloud "
                    "is unreachable the local model answers and a notice says so.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--system", default=None, help="system prompt (default: the chat template's own)")
    parser.add_argument("--max-tokens", type=int, default=512, help="most tokens per answer")
    g = parser.add_argument_group("sampling (temperature 0 = greedy)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0, help="0 disables")
    g.add_argument("--top-p", type=float, default=1.0, help="1 disables")
    g.add_argument("--seed", type=int, default=None, help="fixes sampled answers")
    EdgeConfig.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        raise InvalidArgument("--max-tokens must be >= 1")
    EdgeConfig.from_args(args).validate()  # before anything loads
    if not args.verbose:  # the screen is the chat's: it says itself when the cloud is unreachable
        logging.getLogger().setLevel(logging.ERROR)
    return asyncio.run(_chat(args))


class ChatSession:
    """The conversation so far, and one answer at a time added to it."""

    def __init__(self, tandem, system: str | None, options: dict):
        self.tandem = tandem
        self.system = system
        self.options = options
        self.history: list[dict] = []
        self.unverified: tuple[list[int], list[int], dict] | None = None  # (prompt, answer ids, options)
        self.reset()

    def reset(self) -> None:
        self.unverified = None
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def context_tokens(self) -> int:
        """The longest conversation (prompt and answer) the model that will answer can hold."""
        engine = self.tandem.engine
        if self.tandem.mode != Mode.EDGE and engine.cloud_info is not None:
            return engine.cloud_info.max_context
        return engine.drafter.n_ctx

    async def _fitting_prompt(self, text: str) -> tuple[list[dict], list[int]]:
        """The conversation with `text` appended, trimmed to leave room for a whole answer.

        Rule: while the prompt plus --max-tokens exceeds the context, the oldest turn (a user
        message and the answer to it) is dropped; a system message stays. Says so when it trims.
        """
        limit = self.context_tokens() - self.options["max_tokens"]
        system = self.history[:1] if self.history and self.history[0]["role"] == "system" else []
        turns = self.history[len(system):]
        dropped = 0
        while True:
            messages = [*system, *turns, {"role": "user", "content": text}]
            prompt_ids = await asyncio.to_thread(self.tandem.encode_chat, messages)
            if len(prompt_ids) <= limit or not turns:
                break
            turns, dropped = turns[2:], dropped + 1
        if dropped:
            _write(f"(history trimmed: dropped the {dropped} oldest turn{'s' * (dropped > 1)} so that the prompt "
                   f"and a {self.options['max_tokens']}-token answer fit the context of {self.context_tokens()} "
                   "tokens)\n")
        return messages, prompt_ids

    async def answer(self, text: str) -> None:
        """Streams the answer to `text` to stdout, then the stats line; keeps the turn in history."""
        await self.check_last_answer()
        messages, prompt_ids = await self._fitting_prompt(text)
        generation = Generation(self.tandem.mode)
        shown = ""
        async with contextlib.aclosing(self.tandem.deltas(prompt_ids, generation, **self.options)) as deltas:
            async for delta in deltas:
                if delta.rewind_to is not None:
                    shown = shown[:delta.rewind_text_to]
                    _write(f"\n↺ the cloud is back: rewritten from token {delta.rewind_to}:\n…{shown[-40:]}")
                    continue
                shown += delta.text
                _write(delta.text)
        _write("\n")
        self.history = [*messages, {"role": "assistant", "content": shown}]
        if generation.provisional_from is not None:  # it ended while the cloud was away: check it later
            options = {**self.options, "seed": generation.seed if generation.seed is not None else self.options["seed"]}
            self.unverified = (prompt_ids, list(generation.token_ids), options)
        if generation.degraded:
            _write(notice(generation) + "\n")
        _write(stats_line(generation, len(prompt_ids)) + "\n")

    async def check_last_answer(self) -> None:
        """Checks the last answer if the local model finished it offline and the cloud is back; an
        answer that differs is replaced in the conversation by the cloud model's."""
        if self.unverified is None or not self.tandem.engine.cloud.up:
            if self.unverified is not None:
                _write("(the last answer is still unverified: the cloud is away; this one is local too)\n")
            return
        prompt_ids, answer_ids, options = self.unverified
        self.unverified = None
        check = await self.tandem.verify(prompt_ids, answer_ids, **options)
        if check.exact:
            _write("✓ the last answer is verified exact\n")
            return
        _write(f"! the last answer {check.state}; the cloud model's answer:\n{check.text}\n")
        self.history[-1] = {"role": "assistant", "content": check.text}


def notice(generation: Generation) -> str:
    where = "" if generation.fallback_at == 0 else f" from token {generation.fallback_at} on"
    later = "; it is checked when the cloud is back" if generation.provisional_from is not None else ""
    return (f"! cloud unreachable: the local model alone wrote this answer{where}{later}; reconnecting in the "
            f"background. [{generation.fallback_reason}]")


def stats_line(generation: Generation, prompt_tokens: int) -> str:
    """[hybrid | 40 tokens | 85.3 tok/s | 2.67 tokens/round | prompt 31 tokens]"""
    s = generation.stats
    parts = [generation.answered_by, f"{len(generation.token_ids)} tokens", f"{s.tokens_per_s:.1f} tok/s"]
    if s.rounds:
        parts.append(f"{s.tokens_per_round:.2f} tokens/round")
    parts.append(f"prompt {prompt_tokens} tokens")
    return "[" + " | ".join(parts) + "]"


async def _chat(args: argparse.Namespace) -> int:
    from edge.sdk import AsyncTandemClient

    require_extra("edge", "tandem chat")
    options = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, offline="rewind")
    async with AsyncTandemClient(config=EdgeConfig.from_args(args)) as tandem:
        session = ChatSession(tandem, args.system, options)
        cloud = tandem.cloud_status
        print(f"tandem chat: draft {tandem.engine.drafter.name}, cloud {cloud.get('address', '-')} "
              f"({cloud['state']}). {HELP}.", flush=True)
        loop = asyncio.get_running_loop()
        lines = _stdin_lines(loop)
        answering: list[asyncio.Task] = []

        def on_interrupt() -> None:
            if answering and not answering[-1].done():
                answering[-1].cancel()  # stop this answer, stay in the chat
            else:
                lines.put_nowait(None)  # at the prompt: leave

        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        try:
            while True:
                _write(PROMPT)
                line = await lines.get()
                if line is None or line.strip() in ("/quit", "/exit"):
                    _write("\n" if line is None else "")
                    return 0
                text = line.strip()
                if text == "/reset":
                    session.reset()
                    _write("(conversation cleared)\n")
                elif text.startswith("/"):
                    _write(f"(unknown command {text}: {HELP})\n")
                elif text:
                    answering[:] = [asyncio.ensure_future(session.answer(text))]
                    try:
                        await answering[0]
                    except TandemError as exc:  # e.g. a message longer than the context: say so, go on
                        _write(f"\n! {exc}\n")
                    except asyncio.CancelledError:
                        if asyncio.current_task().cancelling():
                            raise
                        _write("\n(interrupted: this turn is not kept)\n")
        finally:
            loop.remove_signal_handler(signal.SIGINT)


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
    """Lines typed on stdin, then None at end of input, fed by a daemon thread."""
    queue: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:
            pass  # the loop closed: the chat is over

    def read() -> None:
        # os.read rather than sys.stdin: a daemon thread must not hold the buffered stdin's
        # lock when the interpreter shuts down.
        fd, pending = sys.stdin.fileno(), b""
        while chunk := os.read(fd, 4096):
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                put(line.decode(errors="replace"))
        if pending:
            put(pending.decode(errors="replace"))
        put(None)

    threading.Thread(target=read, name="tandem-chat-input", daemon=True).start()
    return queue


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
