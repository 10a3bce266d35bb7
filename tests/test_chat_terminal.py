"""`tandem chat` driven as a terminal program: keystrokes in, screen out (pexpect, a real pty).

Assertions are about behaviour, not the (random tiny model's) words: a stats line follows every
answer; the conversation grows the prompt turn by turn; /reset brings back the first turn's
exact prompt and (greedy, exact) answer; Ctrl-C stops an answer; an unreachable cloud gives a
notice and a local answer.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parents[1]
STATS = re.compile(r"\[(hybrid|local|hybrid-then-local) \| (\d+) tokens \| [\d.]+ tok/s"
                   r"( \| [\d.]+ tokens/round)? \| prompt (\d+) tokens\]")
PROMPT = "you> "


def spawn_chat(*args: str) -> pexpect.spawn:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "TERM": "dumb"}
    return pexpect.spawn(sys.executable, ["-m", "tandem", "chat", "--threads", "1", "--n-ctx", "2048", *args],
                         env=env, cwd=str(ROOT), encoding="utf-8", timeout=90, dimensions=(40, 200))


def ask(child: pexpect.spawn, text: str) -> tuple[str, int, int, str]:
    """Types a line at the prompt; returns (mode, answer tokens, prompt tokens, answer text)."""
    child.expect_exact(PROMPT)
    child.sendline(text)
    child.expect_exact(text + "\r\n")  # the terminal's echo
    child.expect(STATS)
    mode, tokens, _, prompt = child.match.groups()
    return mode, int(tokens), int(prompt), child.before


@pytest.fixture
def chat(tiny_cloud, tiny_models):
    children = []

    def start(*args: str) -> pexpect.spawn:
        children.append(spawn_chat("--draft-model", str(tiny_models.drafts["noisy"]), *args))
        return children[-1]

    yield start
    for child in children:
        child.close(force=True)


def test_multi_turn_reset_and_quit(chat, tiny_cloud):
    child = chat("--cloud", tiny_cloud.address, "--max-tokens", "12", "--fallback-timeout", "30")
    child.expect(r"tandem chat: .*\(up\)")
    mode, tokens, first_prompt, first_answer = ask(child, "Hello there")
    assert mode == "hybrid" and 1 <= tokens <= 12
    mode, _, second_prompt, _ = ask(child, "Tell me more")
    assert mode == "hybrid" and second_prompt > first_prompt + 3  # the first turn is in the context
    child.expect_exact(PROMPT)
    child.sendline("/reset")
    child.expect_exact("(conversation cleared)")
    mode, _, prompt, answer = ask(child, "Hello there")
    assert (prompt, answer) == (first_prompt, first_answer)  # a fresh conversation, a greedy exact answer
    child.expect_exact(PROMPT)
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_then_leaves_at_the_prompt(chat, tiny_cloud):
    child = chat("--cloud", tiny_cloud.address, "--max-tokens", "1500", "--fallback-timeout", "30")
    child.expect_exact(PROMPT)
    child.sendline("Write a very long story")
    child.expect_exact("Write a very long story\r\n")
    child.expect(r"\S")  # the answer has started
    child.sendintr()
    child.expect_exact("(interrupted: this turn is not kept)")
    child.expect_exact(PROMPT)
    child.sendintr()  # at the prompt, Ctrl-C leaves
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_unreachable_cloud_gives_a_notice_and_a_local_answer(chat):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = chat("--cloud", f"127.0.0.1:{port}", "--fallback-timeout", "1", "--max-tokens", "8")
    child.expect(r"tandem chat: .*\(down\)")
    child.expect_exact(PROMPT)
    child.sendline("Hi")
    child.expect_exact("! cloud unreachable")
    child.expect(STATS)
    assert child.match.group(1) == "local" and child.match.group(3) is None  # no cloud rounds
    child.expect_exact(PROMPT)
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_an_answer_written_offline_is_checked_before_the_next_turn(chat, tiny_cloud):
    """The cloud is away for a whole answer and back before the next message: the answer is marked,
    then checked as a history prefix before the next one is answered (hybrid again)."""
    import time

    from bench.relay import LinkConfig, RelayThread

    host, port = tiny_cloud.address.rsplit(":", 1)
    with RelayThread((host, int(port)), LinkConfig(one_way_delay_s=600.0)) as relay:
        child = chat("--cloud", f"127.0.0.1:{relay.port}", "--fallback-timeout", "1", "--max-tokens", "16")
        child.expect(r"tandem chat: .*\(down\)")
        child.expect_exact(PROMPT)
        child.sendline("Hi")
        child.expect_exact("it is checked when the cloud is back")
        child.expect(STATS)
        assert child.match.group(1) == "local"
        relay.set_config(LinkConfig())
        relay.drop_connections()
        time.sleep(4.0)  # the background probe (every <= 2 s) finds the cloud back
        child.expect_exact(PROMPT)
        child.sendline("Tell me more")
        child.expect(r"(✓ the last answer is verified exact|! the last answer differs from position \d+; "
                     r"the cloud model's answer:)")
        child.expect(STATS)
        assert child.match.group(1) == "hybrid"
        child.expect_exact(PROMPT)
        child.sendline("/quit")
        child.expect(pexpect.EOF)
