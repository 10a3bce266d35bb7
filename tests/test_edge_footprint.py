"""No torch on the edge: a hybrid answer, a `tandem serve` request and a `tandem chat` turn, each
in a process of its own, never import torch or transformers (issue 25).

The edge tokenizes with `tokenizers` from the tokenizer files transformers wrote once per draft
(edge/tokenizer_conversion.py); this test warms that cache first, as any second start finds it.
Each command runs under a small driver that records, at exit, which heavy modules were imported.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")
DRIVER = """
import atexit, json, os, sys
def record():
    with open(os.environ["TANDEM_TEST_MODULES"], "w") as f:
        json.dump(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}), f)
atexit.register(record)
from tandem.cli import main
sys.exit(main(sys.argv[1:]))
""".format(heavy=set(HEAVY))


@pytest.fixture
def edge_command(tiny_models, tmp_path):
    """edge_command(*args) -> (argv, env, record file): `tandem ARGS` under the driver."""
    from edge.tokenizer import load_tokenizer

    load_tokenizer(tiny_models.drafts["noisy"])  # warm caches: converted once, as on any first start
    record = tmp_path / "modules.json"
    env = {**os.environ, "TANDEM_TEST_MODULES": str(record), "TERM": "dumb",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def command(*args: str) -> list[str]:
        return [sys.executable, "-c", DRIVER, *args, "--draft-model", str(tiny_models.drafts["noisy"]),
                "--threads", "1"]

    return command, env, record


def imported_heavy(record: Path) -> list[str]:
    assert record.is_file(), "the command did not exit through the interpreter's normal exit"
    return json.loads(record.read_text())


def test_a_hybrid_generation_imports_no_torch(edge_command, tiny_cloud):
    command, env, record = edge_command
    result = subprocess.run(command("generate", "--cloud", tiny_cloud.address, "--max-tokens", "16", "--chat",
                                    "Explain how a bicycle works."),
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "[hybrid]" in result.stderr and " 0 cloud passes" not in result.stderr, result.stderr
    assert imported_heavy(record) == []


def test_a_serve_request_imports_no_torch(edge_command, tiny_cloud):
    command, env, record = edge_command
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(command("serve", "--cloud", tiny_cloud.address, "--port", str(port)), cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:
            if "tandem serve ready" in line:
                break
        else:
            pytest.fail("tandem serve exited before it was ready")
        body = json.dumps({"model": "tandem", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "Hello there"}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        assert answer["usage"]["completion_tokens"] >= 1
        assert response.headers["X-Tandem-Answered-By"] == "hybrid"
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert server.returncode == 0
    assert imported_heavy(record) == []


def test_a_chat_turn_imports_no_torch(edge_command, tiny_cloud):
    command, env, record = edge_command
    argv = command("chat", "--cloud", tiny_cloud.address, "--max-tokens", "8")
    child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(ROOT), encoding="utf-8", timeout=90,
                          dimensions=(40, 200))
    try:
        child.expect_exact("you> ")
        child.sendline("Hello there")
        child.expect(re.compile(r"\[hybrid \| \d+ tokens"))
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert imported_heavy(record) == []
