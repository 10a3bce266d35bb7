"""`tandem generate` with sampling flags, --n and --stop, as other tools call it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from edge import AsyncTandemClient
from edge.config import EdgeConfig

PROMPT = "Once upon a time"
SAMPLING = ["--temperature", "1.5", "--top-k", "40", "--top-p", "0.95", "--seed", "5"]


def tandem(*args, timeout=180):
    env = {**os.environ, "TANDEM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tandem", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_n_sampled_completions_in_one_json_object(tiny_cloud, tiny_models):
    draft = str(tiny_models.drafts["noisy"])
    result = tandem("generate", PROMPT, *SAMPLING, "--n", "3", "--max-tokens", "12", "--stop", "ing", "--stop", "\n",
                    "--json", "--model", str(tiny_models.target_dir), "--draft-model", draft)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)  # exactly one JSON object on stdout
    choices, stats = out["choices"], out["stats"]
    assert len(choices) == 3 and all({"text", "token_ids", "finish_reason"} <= c.keys() for c in choices)
    assert [c["seed"] for c in choices] == [5, 6, 7]
    assert stats["tokens"] == sum(len(c["token_ids"]) for c in choices)
    assert all("ing" not in c["text"] and "\n" not in c["text"] for c in choices)
    assert "stop" in {c["finish_reason"] for c in choices}  # a stop string really ended one
    assert len({tuple(c["token_ids"]) for c in choices}) == 3  # each seed its own completion

    # The same seeds through the SDK, against another cloud: the same completions.
    config = EdgeConfig(cloud=tiny_cloud.address, draft_model=draft, threads=1)

    async def sdk():
        async with AsyncTandemClient(config=config) as sdk_tandem:
            return await sdk_tandem.complete_n(PROMPT, 3, max_tokens=12, temperature=1.5, top_k=40, top_p=0.95,
                                               seed=5, stop=["ing", "\n"])

    for choice, completion in zip(choices, asyncio.run(sdk())):
        assert (choice["text"], choice["token_ids"], choice["finish_reason"]) == \
               (completion.text, completion.token_ids, completion.finish_reason)


def test_help_documents_the_sampling_contract():
    result = tandem("generate", "--help")
    for flag in ("--temperature", "--top-k", "--top-p", "--seed", "--n", "--json", "--stop", "--draft-mode"):
        assert flag in result.stdout


@pytest.mark.slow
def test_500_completions_of_two_tokens_with_the_default_pair():
    """`--n 500 --max-tokens 2`: one model load, one connection, and prefills from the prefix cache."""
    result = tandem("generate", "The capital of France is", *SAMPLING, "--n", "500", "--max-tokens", "2", "--json",
                    timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out["choices"]) == 500
    assert out["stats"]["cloud_forward_passes"] < 100  # most sessions never ran the model
