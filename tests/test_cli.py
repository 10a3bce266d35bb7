"""The `tandem` command as other tools call it: exact flags, one JSON object, clean shutdown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import hf_greedy

STATS_FIELDS = {"rounds", "drafted", "accepted", "cloud_forward_passes", "bytes_sent", "bytes_received",
                "tokens_per_s", "ttft_s"}


def tandem(*args, timeout=180):
    env = {**os.environ, "TANDEM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tandem", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def start_cloud(model_dir, *flags):
    """`tandem cloud --port 0`; returns (process, address) once it logs its ready line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tandem", "cloud", "--port", "0", "--model", str(model_dir), "--threads", "1", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = process.stdout.readline()
    match = re.search(r"ready.* listening on ([\d.]+:\d+)", line)
    assert match, f"no ready line, got {line!r}"
    return process, match.group(1)


def test_cloud_serves_then_stops_gracefully_on_sigterm(tiny_models, tiny_target, tiny_drafter):
    drain_timeout_s = 120
    process, address = start_cloud(tiny_models.target_dir, "--drain-timeout", str(drain_timeout_s))
    try:
        drafter = tiny_drafter("noisy")
        prompt = "Once upon a time"
        result = tandem("generate", prompt, "--cloud", address, "--draft-model", str(tiny_models.drafts["noisy"]),
                        "--max-tokens", "12", "--json")
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["token_ids"] == hf_greedy(tiny_target, drafter.tokenize(prompt), 12)
    finally:
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=drain_timeout_s + 30) == 0
        # No session is live, so the drain ends at once: the process exits well before the drain
        # timeout. A quarter of it is the margin a loaded 2-core machine keeps for tearing down
        # gRPC and torch (a second or two idle).
        assert time.monotonic() - started < drain_timeout_s / 4


@pytest.mark.parametrize("mode", ["hybrid", "cloud", "edge"])
def test_generate_json_contract(tiny_models, tiny_target, tiny_drafter, mode):
    prompt = "def add(a, b):"
    # Hybrid drafts throughout: with --cloud-decode (the default) a tiny target that outruns its
    # draft may stream the whole answer alone (tests/test_never_slower.py covers that contract).
    pinned = ["--no-cloud-decode"] if mode == "hybrid" else []
    result = tandem("generate", prompt, "--mode", mode, "--max-tokens", "16", "--json", *pinned,
                    "--model", str(tiny_models.target_dir), "--draft-model", str(tiny_models.drafts["noisy"]))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert {"text", "token_ids", "finish_reason"} <= out.keys() and STATS_FIELDS <= out["stats"].keys()
    s, ids = out["stats"], out["token_ids"]
    assert out["finish_reason"] in ("stop", "length") and 0 < len(ids) <= 16
    assert s["tokens"] == len(ids)
    assert s["ttft_s"] > 0 and s["tokens_per_s"] > 0
    reference = hf_greedy(tiny_target, tiny_drafter("noisy").tokenize(prompt), 16)
    if mode == "edge":
        assert s["rounds"] == s["cloud_forward_passes"] == s["bytes_sent"] == 0
        return
    assert ids == reference
    assert s["rounds"] == s["cloud_forward_passes"]
    assert 0 <= s["accepted"] <= s["drafted"]
    assert s["bytes_sent"] > 0 and s["bytes_received"] > 0
    if mode == "hybrid":
        assert s["drafted"] > 0 and len(ids) <= s["rounds"] + s["accepted"] + s["hinted"]
    else:
        assert s["drafted"] == 0 and s["rounds"] == len(ids)


def test_a_pair_of_different_vocabularies_works(tiny_models, tiny_target):
    """A draft whose ids mean other tokens drafts through the target's tokenizer, read from
    --model (edge/cross_vocab.py): a pair is no longer refused because its vocabularies differ."""
    result = tandem("generate", "hi", "--json", "--max-tokens", "12", "--no-cloud-decode",
                    "--model", str(tiny_models.target_dir), "--draft-model", str(tiny_models.drafts["mismatched"]))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["token_ids"] == hf_greedy(tiny_target, tiny_target.encode("hi"), 12)
    # Whether the deferred draft is ready before a tiny target's 12 tokens are out depends on the
    # machine's load, so how much it drafted is not asserted here; tests/test_cross_vocab.py proves
    # the drafting itself (rejections in every position class) without the CLI's timing.
    s = out["stats"]
    assert 0 <= s["accepted"] <= s["drafted"] and s["tokens"] == len(out["token_ids"])


def test_a_mismatched_pair_with_a_remote_cloud_fetches_the_targets_tokenizer(tiny_models, tiny_target):
    """No --target-tokenizer and no --model: the edge fetches the cloud's tokenizer (GetTokenizer),
    says so once on stderr, and answers as the target."""
    process, address = start_cloud(tiny_models.target_dir)
    try:
        result = tandem("generate", "hi", "--json", "--max-tokens", "12", "--cloud", address, "--no-adaptive",
                        "--draft-model", str(tiny_models.drafts["mismatched"]))  # drafts whether or not it pays
    finally:
        process.kill()  # graceful shutdown is test_cloud_serves_then_stops_gracefully_on_sigterm's subject
        process.wait()
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["token_ids"] == hf_greedy(tiny_target, tiny_target.encode("hi"), 12)
    s = out["stats"]  # how much it drafted depends on load (see the test above)
    assert 0 <= s["accepted"] <= s["drafted"] and s["tokens"] == len(out["token_ids"])


def test_help_documents_the_contract():
    result = tandem("generate", "--help")
    for flag in ("--cloud", "--max-tokens", "--mode", "--json"):
        assert flag in result.stdout
    result = tandem("cloud", "--help")
    for flag in ("--host", "--port", "--model"):
        assert flag in result.stdout
