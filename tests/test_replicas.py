"""Many replicas: two real `tandem cloud` processes behind HAProxy (deploy/haproxy.cfg) or the
channel's own round_robin; a replica SIGKILLed mid-answer; SIGTERM drains; balance.

The properties: a broken answer resumes on the other replica and stays exactly the target's
(greedy: its own greedy output; seeded sampling: the uninterrupted run with that seed), is not
degraded, and counts its resume; sessions spread over both replicas.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cloud_process import ROOT, CloudProcess, cli, cli_env
from conftest import hf_greedy

from common.errors import CloudUnavailable
from common.wire import SamplingParams
from edge.client import CloudClient
from edge.engine import EdgeEngine, Generation, GenerationRequest, Mode
from edge.fallback import FallbackConfig
from edge.speculation_config import SpeculationConfig

HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
PROMPT = "Once upon a time"
ANSWER = 64
# Small blocks: many rounds, so the answer is still streaming when the replica is killed.
SPECULATION = SpeculationConfig(draft_tokens=4, max_in_flight=2)
# Fallback on, with a window wide enough for a loaded 2-core machine: a resume that failed would
# show as a degraded answer.
FALLBACK = FallbackConfig(timeout_s=10.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replicas:
    """Two `tandem cloud` processes; restart() brings one back on its port."""

    def __init__(self, model_dir: Path, *args: str):
        self.model_dir = model_dir
        self.metrics_ports = [free_port(), free_port()]
        self.processes = [CloudProcess(model_dir, *args, "--metrics-port", str(port)) for port in self.metrics_ports]

    def start(self) -> Replicas:
        for process in self.processes:
            process.start()
        return self

    @property
    def addresses(self) -> list[str]:
        return [p.address for p in self.processes]

    def by_name(self, replica: str) -> CloudProcess:
        port = int(replica.rsplit(":", 1)[1])
        return next(p for p in self.processes if p.port == port)

    def restart(self, process: CloudProcess) -> None:
        process.stop()
        fresh = CloudProcess(self.model_dir, *process.args, port=process.port).start()
        self.processes[self.processes.index(process)] = fresh

    def ensure_running(self) -> None:
        for process in list(self.processes):
            if process.process.poll() is not None:
                self.restart(process)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


class HAProxy:
    """haproxy -f deploy/haproxy.cfg in front of the replicas (the file as shipped)."""

    def __init__(self, replicas: list[str]):
        self.port = free_port()
        env = dict(os.environ, TANDEM_LB_BIND=f"127.0.0.1:{self.port}",
                   TANDEM_REPLICA_1=replicas[0], TANDEM_REPLICA_2=replicas[1])
        self.process = subprocess.Popen(["haproxy", "-db", "-f", str(HAPROXY_CFG)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


async def both_balanced(address: str, timeout_s: float = 30.0) -> None:
    """Waits until calls through `address` reach both replicas (each passed HAProxy's health check)."""
    client = CloudClient(address, connect_timeout_s=10)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                names = {(await client.info()).replica for _ in range(6)}
            except CloudUnavailable:
                names = set()
            if len(names) == 2:
                return
            await asyncio.sleep(0.3)
        raise AssertionError(f"calls through {address} never reached both replicas")
    finally:
        await client.close()


@pytest.fixture(scope="module")
def replicas(tiny_models):
    started = Replicas(tiny_models.target_dir, "--prefix-cache-mb", "0", "--drain-timeout", "10").start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def haproxy(replicas):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (make test installs it with apt-get)")
    proxy = HAProxy(replicas.addresses)

    asyncio.run(both_balanced(proxy.address))
    yield proxy
    proxy.stop()


def answer(cloud: str, drafter, prompt_ids, sampling=SamplingParams(), *, kill_after=None, replicas=None,
           mode=Mode.HYBRID) -> Generation:
    """One answer through `cloud`; with kill_after, SIGKILLs the replica serving it after that many tokens."""

    async def run():
        client = CloudClient(cloud, connect_timeout_s=10)
        engine = EdgeEngine(drafter, client, SPECULATION, FALLBACK)
        try:
            await engine.open()
            generation = Generation(mode)
            killed = None
            async for _ in engine.generate(GenerationRequest(prompt_ids, ANSWER, sampling), mode, generation):
                if kill_after is not None and killed is None and len(generation.token_ids) >= kill_after:
                    killed = replicas.by_name(generation.replica)
                    killed.kill()
            assert kill_after is None or killed is not None, "the answer ended before the kill"
            return generation
        finally:
            await engine.close()
            await client.close()

    return asyncio.run(asyncio.wait_for(run(), 120))


def assert_resumed_on_the_other_replica(generation: Generation) -> None:
    assert not generation.degraded, generation.fallback_reason
    assert generation.answered_by in ("hybrid", "cloud")
    assert generation.stats.resumes >= 1 and generation.stats.resume_s > 0
    replicas = [name for _, name in generation.served_by]
    assert len(set(replicas)) == 2, generation.served_by  # started on one, finished on the other
    starts = [start for start, _ in generation.served_by]
    assert starts[0] == 0 and starts == sorted(starts) and starts[-1] < len(generation.token_ids)


def test_health_reports_each_replica(replicas):
    a, b = replicas.addresses
    done = subprocess.run(cli("health", "--cloud", f"{a},{b}"), env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{a}: SERVING", f"{b}: SERVING"]
    ports = ",".join(str(p) for p in replicas.metrics_ports)
    done = subprocess.run(cli("health", "--cloud", f"{a},{b}", "--metrics-port", ports), env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for line, replica in zip(done.stdout.splitlines(), (a, b)):  # the counters start at 0 on a fresh replica
        assert line.startswith(f"{replica}: SERVING sessions_live=") and " resumed_sessions=" in line, line
    closed = f"127.0.0.1:{free_port()}"
    done = subprocess.run(cli("health", "--cloud", f"{a},{closed}", "--timeout", "2"), env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == f"{a}: SERVING" and lines[1].startswith(f"{closed}: UNREACHABLE")


@pytest.mark.parametrize("mode", [Mode.HYBRID, Mode.CLOUD])
def test_replica_killed_mid_answer_behind_haproxy_greedy(haproxy, replicas, tiny_target, tiny_drafter, mode):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    try:
        generation = answer(haproxy.address, drafter, prompt, kill_after=8, replicas=replicas, mode=mode)
    finally:
        replicas.ensure_running()
    assert generation.token_ids == hf_greedy(tiny_target, prompt, ANSWER)
    assert_resumed_on_the_other_replica(generation)


def test_replica_killed_mid_answer_behind_haproxy_seeded(haproxy, replicas, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    sampling = SamplingParams(temperature=0.9, top_k=50, seed=1234)
    unbroken = answer(replicas.addresses[0], drafter, prompt, sampling)
    assert unbroken.stats.resumes == 0 and len(unbroken.token_ids) > 8
    try:
        broken = answer(haproxy.address, drafter, prompt, sampling, kill_after=8, replicas=replicas)
    finally:
        replicas.ensure_running()
    assert broken.token_ids == unbroken.token_ids
    assert_resumed_on_the_other_replica(broken)


def test_replica_killed_mid_answer_client_side_round_robin(replicas, tiny_target, tiny_drafter):
    drafter = tiny_drafter("noisy")
    prompt = drafter.tokenize(PROMPT)
    try:
        generation = answer(",".join(replicas.addresses), drafter, prompt, kill_after=8, replicas=replicas)
    finally:
        replicas.ensure_running()
    assert generation.token_ids == hf_greedy(tiny_target, prompt, ANSWER)
    assert_resumed_on_the_other_replica(generation)


def test_the_replica_that_took_over_counts_resumed_sessions(replicas):
    """After the kills above, the surviving replicas' /metrics count the sessions they resumed."""
    from cloud.health_probe import metric_sum

    resumed = 0.0
    for port in replicas.metrics_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert metric_sum(text, "tandem_sessions_live") is not None
        resumed += metric_sum(text, "tandem_resumed_sessions_total")
    assert resumed >= 1


@pytest.mark.parametrize("balancer", ["haproxy", "round_robin"])
def test_sessions_spread_over_both_replicas(request, replicas, tiny_drafter, balancer):
    cloud = request.getfixturevalue("haproxy").address if balancer == "haproxy" else ",".join(replicas.addresses)
    drafter = tiny_drafter("exact")
    prompt = drafter.tokenize(PROMPT)

    async def run():
        await both_balanced(cloud)  # a replica restarted by an earlier test is back in rotation
        client = CloudClient(cloud, connect_timeout_s=10)
        engine = EdgeEngine(drafter, client, SPECULATION, FALLBACK)
        try:
            await engine.open()
            served = collections.Counter()
            for _ in range(100):
                generation = await engine.generate_to_end(GenerationRequest(prompt, 2), Mode.HYBRID)
                served[generation.replica] += 1
            return served
        finally:
            await engine.close()
            await client.close()

    served = asyncio.run(asyncio.wait_for(run(), 120))
    assert sum(served.values()) == 100 and len(served) == 2, served
    assert min(served.values()) >= 30, served


def test_rolling_restart_under_load(haproxy, replicas, tiny_models, tiny_target):
    """20 answers at a time, back to back, while each replica in turn is SIGTERMed and restarted."""
    from edge.llama_drafter import LlamaDrafter

    prompts = ["Once upon a time", "The weather today", "In a distant galaxy", "My favourite recipe"]
    drafters = [LlamaDrafter(tiny_models.drafts["noisy"], n_ctx=256, threads=1, f32_cache=True) for _ in range(20)]
    prompt_ids = [drafters[0].tokenize(p) for p in prompts]
    expected = [hf_greedy(tiny_target, ids, ANSWER) for ids in prompt_ids]
    drain_logs = []  # each stopped replica's log

    async def restart_each(done: asyncio.Event):
        await asyncio.sleep(1.0)  # answers in flight on both replicas
        for i in range(2):
            process = replicas.processes[i]
            await asyncio.to_thread(process.stop)  # SIGTERM: drain, then exit
            drain_logs.append("".join(process.log))
            fresh = CloudProcess(replicas.model_dir, *process.args, port=process.port)
            replicas.processes[i] = await asyncio.to_thread(fresh.start)
            await both_balanced(haproxy.address)  # HAProxy sends it sessions again
        done.set()

    async def run():
        client = CloudClient(haproxy.address, connect_timeout_s=10)
        engines = [EdgeEngine(drafter, client, SPECULATION, FALLBACK) for drafter in drafters]
        done = asyncio.Event()
        answers = []  # (prompt index, Generation)

        async def keep_answering(engine: EdgeEngine, k: int):
            await engine.open()
            while not done.is_set():
                p = k % len(prompts)
                answers.append((p, await engine.generate_to_end(GenerationRequest(prompt_ids[p], ANSWER), Mode.HYBRID)))
                k += 1

        try:
            await asyncio.gather(restart_each(done), *(keep_answering(e, k) for k, e in enumerate(engines)))
        finally:
            for engine in engines:
                await engine.close()
            await client.close()
        return answers

    try:
        answers = asyncio.run(asyncio.wait_for(run(), 300))
    finally:
        replicas.ensure_running()
        for drafter in drafters:
            drafter.close()
    assert len(answers) >= 40
    for p, generation in answers:
        assert not generation.degraded, generation.fallback_reason
        assert generation.token_ids == expected[p]
    assert sum(g.stats.resumes for _, g in answers) >= 1  # the drains moved live answers
    for log in drain_logs:  # the live sessions left before the drain timeout
        assert "drained: no live session left" in log, log[-3000:]
