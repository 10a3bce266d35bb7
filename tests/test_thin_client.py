"""The thin client: `pip install .` without extras streams cloud-only answers from a running cloud.

A fresh virtualenv gets the project alone (gRPC, protobuf, numpy: no torch, no llama.cpp, no
aiohttp); the cloud runs in this process on the tiny target. The SDK and `tandem generate
--mode cloud` answer through Generate's prompt_text / return_text, `tandem --help` and
`tandem health` work, and commands that need an extra say which one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import hf_greedy

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The quick brown fox"
MAX_TOKENS = 12
SDK = f"""
import json, sys
from edge import TandemClient
with TandemClient(sys.argv[1], mode="cloud") as tandem:
    completion = tandem.complete({PROMPT!r}, max_tokens={MAX_TOKENS})
    streamed = "".join(tandem.stream({PROMPT!r}, max_tokens={MAX_TOKENS}))
print(json.dumps(dict(text=completion.text, token_ids=completion.token_ids, streamed=streamed)))
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def thin_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("thin") / "venv"
    venv.EnvBuilder(with_pip=True).create(root)
    # A copy of the source tree (what git tracks or would), so the build leaves nothing in the checkout.
    source = root.parent / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", str(source)], check=True,
                   capture_output=True, timeout=900)
    return root


def thin(venv_root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "PYTHON"))}
    return subprocess.run([str(venv_root / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=venv_root)


def test_no_engine_is_installed(thin_venv):
    result = thin(thin_venv, "python", "-c", "import importlib.util as u; "
                  "print([m for m in ('torch', 'transformers', 'llama_cpp', 'aiohttp') if u.find_spec(m)])")
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_sdk_and_cli_stream_a_cloud_only_answer(thin_venv, tiny_cloud, tiny_target):
    expected = hf_greedy(tiny_target, tiny_target.tokenize(PROMPT), MAX_TOKENS)

    sdk = thin(thin_venv, "python", "-c", SDK, tiny_cloud.address)
    assert sdk.returncode == 0, sdk.stderr
    answer = json.loads(sdk.stdout)
    assert answer["token_ids"] == expected
    assert answer["streamed"] == answer["text"]

    cli = thin(thin_venv, "tandem", "generate", PROMPT, "--mode", "cloud", "--cloud", tiny_cloud.address,
               "--max-tokens", str(MAX_TOKENS), "--json")
    assert cli.returncode == 0, cli.stderr
    out = json.loads(cli.stdout)
    assert out["token_ids"] == expected and out["text"] == answer["text"]


def test_help_and_health_work(thin_venv, tiny_cloud):
    result = thin(thin_venv, "tandem", "--help")
    assert result.returncode == 0 and "generate" in result.stdout, result.stderr
    health = thin(thin_venv, "tandem", "health", "--cloud", tiny_cloud.address)
    assert health.returncode == 0 and health.stdout.strip() == "SERVING", health.stderr


@pytest.mark.parametrize("args,extra", [
    (["generate", "hi", "--mode", "hybrid", "--cloud", "127.0.0.1:1"], "edge"),
    (["generate", "hi", "--mode", "cloud"], "cloud"),  # no --cloud: an embedded cloud
    (["serve"], "edge"),
    (["chat", "--cloud", "127.0.0.1:1"], "edge"),
    (["cloud", "--port", "0"], "cloud"),
    (["bench"], "cloud"),
])
def test_commands_that_need_an_extra_say_which(thin_venv, args, extra):
    result = thin(thin_venv, "tandem", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"pip install 'tandem[{extra}]'" in result.stderr and "Traceback" not in result.stderr
