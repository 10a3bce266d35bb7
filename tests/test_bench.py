"""`tandem bench` end to end on the tiny models: two pinned processes, the relay, every output.

Asserts properties of what it wrote, never timings: hybrid output identical to cloud-only
output, bytes counted on the link for the networked modes only, each side on its own CPU
with a thread pool sized to it, and the JSON, table and plots present.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bench_process import pinned_bench

RTTS = [0.0, 10.0]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def bench_run(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = pinned_bench("--rtt-ms", ",".join(f"{r:g}" for r in RTTS), "--prompts", "2", "--max-tokens",
                        str(MAX_TOKENS), "--out", str(out), "--model", str(tiny_models.target_dir),
                        "--draft-model", str(tiny_models.drafts["noisy"]), "--resume-after", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done, json.loads((out / "bench.json").read_text())


def test_bench_writes_table_json_and_plots(bench_run):
    out, done, result = bench_run
    assert "RTT ms" in done.stdout and "targets:" in done.stdout
    assert "bench [" in done.stderr  # the progress display
    for name in ("tokens_per_s.png", "tokens_per_round.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(result["summary"]) == sorted(f"{r:g}" for r in RTTS)
    runs = result["runs"]
    assert len(runs) == len(RTTS) * 2 * 3
    assert {(r["rtt_ms"], r["prompt"], r["mode"]) for r in runs} == {
        (rtt, p, m) for rtt in RTTS for p in range(2) for m in ("hybrid", "cloud", "edge")}
    assert {t["figure"].split(" (")[0] for t in result["targets"]} >= {
        "cloud forward passes per generated token", "hybrid output identical to cloud-only output"}


def test_bench_hybrid_output_is_the_cloud_output(bench_run):
    _, _, result = bench_run
    runs = result["runs"]
    cloud = {(r["rtt_ms"], r["prompt"]): r["token_ids"] for r in runs if r["mode"] == "cloud"}
    for r in runs:
        assert 0 < r["tokens"] == len(r["token_ids"]) <= MAX_TOKENS
        if r["mode"] == "hybrid":
            assert r["token_ids"] == cloud[(r["rtt_ms"], r["prompt"])]
    for modes in result["summary"].values():
        assert modes["hybrid"]["identical_to_cloud"] == 1.0


def test_bench_counts_bytes_on_the_link(bench_run):
    _, _, result = bench_run
    for r in result["runs"]:
        if r["mode"] == "edge":
            assert r["tcp_bytes_up"] + r["tcp_bytes_down"] < 100  # no traffic but a possible keepalive
        else:
            # The link carries the serialized messages plus HTTP/2 framing and headers.
            assert r["tcp_bytes_up"] > r["bytes_sent"] > 0
            assert r["tcp_bytes_down"] > r["bytes_received"] > 0
        if r["mode"] != "edge" and r["rtt_ms"] > 0:
            assert r["ttft_s"] >= r["rtt_ms"] / 1000  # the first token crossed the delayed link


def test_bench_pins_the_two_sides_apart(bench_run):
    _, _, result = bench_run
    machine = result["machine"]
    assert machine["cloud_cpus"] and machine["edge_cpus"]
    assert not set(machine["cloud_cpus"]) & set(machine["edge_cpus"])
    assert machine["edge_draft_threads"] == len(machine["edge_cpus"])
    assert machine["cloud_torch_threads"] == len(machine["cloud_cpus"])


def test_frame_tally_splits_http2_frames_across_chunks():
    from bench.h2frames import CLIENT_PREFACE, FrameTally

    def frame(kind: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, 0]) + (1).to_bytes(4, "big") + payload

    up = CLIENT_PREFACE + frame(4, b"") + frame(1, b"h" * 20) + frame(0, b"d" * 300) + frame(8, b"w" * 4)
    down = frame(0, b"x" * 7) + frame(6, b"p" * 8)
    tally = FrameTally()
    for i in range(0, len(up), 5):  # chunks that cut through the preface and every frame
        tally(1, "up", up[i:i + 5])
    tally(1, "down", down)
    snapshot = tally.snapshot()
    assert snapshot["bytes"] == {"up SETTINGS": 9, "up HEADERS": 29, "up DATA": 309, "up WINDOW_UPDATE": 13,
                                 "down DATA": 16, "down PING": 17}
    assert sum(snapshot["bytes"].values()) == len(up) - len(CLIENT_PREFACE) + len(down)
    assert set(snapshot["frames"].values()) == {1}
    tally.reset()
    assert tally.snapshot() == {"bytes": {}, "frames": {}}


def test_bench_splits_link_bytes_by_frame(bench_run):
    _, _, result = bench_run
    for r in result["runs"]:
        if r["mode"] != "edge":
            assert sum(r["h2"]["bytes"].values()) == r["tcp_bytes_up"] + r["tcp_bytes_down"]
            data = r["h2"]["bytes"]["up DATA"] + r["h2"]["bytes"]["down DATA"]
            assert data > r["bytes_sent"] + r["bytes_received"]  # messages travel inside DATA frames


def test_sse_bytes_render_every_token_as_an_openai_chunk(tiny_drafter):
    """The SSE baseline: a chunk per token whose text is that token's, plus a final chunk and [DONE]."""
    import json as json_

    from bench.sse import openai_sse_bytes

    drafter = tiny_drafter("exact")
    ids = drafter.tokenize("The sea is blue and the sky is grey.")
    total = openai_sse_bytes(drafter.token_bytes, ids, "stop", 10)
    events = [json_.dumps({"id": "chatcmpl-" + "0" * 24}) for _ in ids]  # a lower bound: the id alone
    assert total > sum(len(e) for e in events) + len(ids) * len("data: \n\n") + len("data: [DONE]\n\n")
    assert openai_sse_bytes(drafter.token_bytes, ids + ids, "stop", 10) > 1.9 * total - 400


def test_bench_ttft_by_prompt_length(tiny_models, tmp_path):
    done = pinned_bench("--rtt-ms", "0", "--ttft-prompt-tokens", "40,200", "--ttft-repeats", "2",
                        "--out", str(tmp_path), "--model", str(tiny_models.target_dir),
                        "--draft-model", str(tiny_models.drafts["noisy"]))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "ttft.json").read_text())
    assert [(r["prompt_tokens"], r["pairs"]) for r in result["ttft_by_prompt_tokens"]] == [(40, 2), (200, 2)]
    assert all(r["identical"] for r in result["ttft_by_prompt_tokens"])
    assert len(result["runs"]) == 8 and {r["mode"] for r in result["runs"]} == {"hybrid", "cloud"}
    assert len(result["targets"]) == 2 and "prompt tokens" in done.stdout


def test_bench_measures_one_resume(bench_run):
    """Paired answers, one with its connection reset mid-way: same output, the resume counted and costed."""
    _, done, result = bench_run
    resume = result["resume"]
    assert resume["rtt_ms"] == 20.0 and resume["pairs"] == 2 and resume["identical_output"]
    runs = resume["runs"]
    assert [r["broken"] for r in runs] == [False, True, False, True]
    assert all(r["resumes"] == 0 for r in runs if not r["broken"])
    assert sum(r["resumes"] for r in runs if r["broken"]) >= 1
    assert all(r["resume_s"] == 0 for r in runs if not r["broken"])
    assert all((r["resume_s"] > 0) == (r["resumes"] > 0) for r in runs if r["broken"])
    assert "One resume at 20 ms RTT" in done.stdout


def readme_load_flags() -> set[str]:
    """Every flag the README shows for `tandem bench --sessions`: the lines that run it and the
    "Load benchmark" section's text up to its first example."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "tandem bench --sessions" in line]
    intro = readme.split("### Load benchmark", 1)[1].split("```", 1)[0]
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", "\n".join(commands) + intro))


@pytest.fixture(scope="module")
def load_run(tiny_models, tmp_path_factory):
    """The load benchmark with every flag the README shows for it (so none of them can crash it)."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        pytest.skip("the load benchmark pins the cloud and the sessions to different CPUs")
    out = tmp_path_factory.mktemp("load")
    flags = {
        "--sessions": "1,3", "--modes": "cloud,hybrid", "--max-tokens": str(MAX_TOKENS), "--prompts": "2",
        "--long-prompt-tokens": "60", "--corrupt-rate": "0.3", "--load-draft-tokens": "6",
        "--max-batch-tokens": "256", "--batch-wait-ms": "20", "--answers-per-session": "2", "--dtype": "float32",
        "--out": str(out),
        "--model": str(tiny_models.target_dir), "--draft-model": str(tiny_models.drafts["noisy"]),
        "--cloud-cpus": str(available[0]), "--edge-cpus": str(available[1]),
    }
    missing = readme_load_flags() - set(flags)
    assert not missing, f"the README shows {sorted(missing)} for tandem bench --sessions: add them here"
    command = [sys.executable, "-m", "tandem", "bench", *(x for pair in flags.items() for x in pair)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done, json.loads((out / "load.json").read_text())


def test_load_bench_outputs_are_the_targets_and_passes_are_shared(load_run):
    out, done, result = load_run
    assert "load  hybrid x 3" in done.stderr and "targets:" in done.stdout  # progress, then the table
    assert (out / "load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = result["rows"]
    assert {(r["mode"], r["sessions"]) for r in rows if not r.get("join_run")} == {
        (m, n) for m in ("cloud", "hybrid") for n in (1, 3)}
    for row in rows:
        # Every session's output is the prompt's own greedy output alone, whatever ran beside it.
        assert row["identical_to_alone"] == row["answers"] == len(row["outputs"])
        assert row["tokens"] == sum(len(o) for o in row["outputs"]) > 0
        assert row["cloud_forward_passes"] >= 1
    by = {(r["mode"], r["sessions"]): r for r in rows if not r.get("join_run")}
    assert by[("cloud", 1)]["sessions_per_pass"] == 1
    assert by[("cloud", 3)]["sessions_per_pass"] > 1  # Generate steps of all sessions share passes
    assert 0 < by[("hybrid", 3)]["acceptance"] < 1
    joined = [r for r in rows if r.get("long_prompt_tokens")]
    assert len(joined) == 1 and joined[0]["long_prompt_tokens"] == 60
    assert {t["figure"].split(",")[0] for t in result["targets"]} >= {"cloud-only aggregate tokens/s"}
    assert len(result["machine"]["cloud_cpus"]) == 1 and result["machine"]["load_average_start"]


def assert_divergence_report_consistent(result: dict) -> None:
    """Each row's first_difference and identical_token_share agree with its outputs and the references."""
    from bench.load import compare

    for row in result["rows"]:
        compared = [compare(o, result["references"][p]) for o, p in zip(row["outputs"], row["prompts"])]
        assert row["first_differences"] == [c["first_difference"] for c in compared]
        assert row["identical_to_alone"] == row["first_differences"].count(None)
        assert row["first_difference"] == min((d for d in row["first_differences"] if d is not None), default=None)
        assert (row["first_difference"] is None) == (row["identical_token_share"] == 1.0)
        if row["mode"] == "hybrid":
            assert 0 <= row["left_reference"] <= row["answers"]


def test_load_bench_reports_how_far_outputs_stray(load_run):
    _, done, result = load_run
    assert_divergence_report_consistent(result)
    for row in result["rows"]:
        if row["mode"] == "hybrid":  # at float32 no output leaves the drafts' reference
            assert row["left_reference"] == 0 and row["acceptance_on_reference"] == row["acceptance"]
    # At float32 the load drafter's drafts (hybrid alone, verified in blocks) are the cloud-only output.
    assert result["drafter_reference"] == {"rounds": [1, 1], "differs_from_cloud_only": [None, None]}
    assert "1st diff" in done.stdout and "tok same" in done.stdout


def test_compare_finds_the_first_difference_and_the_share():
    from bench.load import compare

    assert compare([1, 2, 3], [1, 2, 3]) == {"first_difference": None, "same": 3, "length": 3}
    assert compare([1, 9, 3], [1, 2, 3]) == {"first_difference": 1, "same": 2, "length": 3}
    assert compare([1, 2], [1, 2, 3]) == {"first_difference": 2, "same": 2, "length": 3}
    assert compare([], [4]) == {"first_difference": 0, "same": 0, "length": 1}


def test_every_bench_output_names_what_produced_it(load_run, bench_run):
    """Commit, dtype, torch and llama.cpp threads, load average before and after: in the JSON and the table."""
    for (_, done, result), llama_threads in ((load_run, None), (bench_run, 1)):
        stamp = result["provenance"]
        assert re.fullmatch(r"[0-9a-f]{7,}(-dirty)?", stamp["commit"])
        assert stamp["dtype"] == "float32" and stamp["cloud_torch_threads"] == 1
        assert stamp["edge_llama_cpp_threads"] == llama_threads
        assert len(stamp["load_average_start"]) == len(stamp["load_average_end"]) == 3
        header = next(line for line in done.stdout.splitlines() if line.startswith("tandem bench"))
        assert f"commit {stamp['commit']}" in header and "dtype float32" in header
        assert "torch threads 1" in header and "llama.cpp threads" in header and "load average" in header


def test_bench_cli_and_load_import_no_cycle():
    """bench.load does not import bench.cli (the CPU checks live in bench.pin)."""
    import ast

    source = (Path(__file__).resolve().parent.parent / "bench" / "load.py").read_text()
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    assert "bench.cli" not in imported


def test_load_bench_at_bfloat16(tiny_models, tmp_path):
    """--dtype bfloat16 runs, says so, and reports divergence consistently (outputs may differ there)."""
    done = pinned_bench("--sessions", "1,2", "--max-tokens", str(MAX_TOKENS), "--prompts", "2",
                        "--long-prompt-tokens", "0", "--dtype", "bfloat16", "--out", str(tmp_path),
                        "--model", str(tiny_models.target_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "load.json").read_text())
    assert result["provenance"]["dtype"] == "bfloat16" and "dtype bfloat16" in done.stdout
    assert_divergence_report_consistent(result)
    assert len(result["drafter_reference"]["rounds"]) == 2
