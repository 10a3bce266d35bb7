"""`tandem distill` end to end on the tiny target: training, export, exactness, resume, bad input.

One distillation run (module fixture, ~a minute) is shared by the tests that inspect its
output; the resume and data-parallel tests start their own short runs as subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import generate_ids, hf_greedy
from bench.tiny_models import build_tiny_target, load_llama, tiny_sentencepiece_tokenizer_dir

from tandem.cli import main

PROMPTS = ["The quick brown fox", "Write a poem about rain", "Explain gravity", "What is a CPU?",
           "Name three colors", "Tell me a joke", "How do birds fly?", "What is two plus two?",
           "def add(a, b):", "Once upon a time"]
STEPS = 24


def distill_args(target: Path, out: Path, prompts: Path, *extra: str) -> list[str]:
    return ["distill", "--target", str(target), "--out", str(out), "--layers", "1", "--prompts", str(prompts),
            "--heldout", "2", "--batch-size", "4", "--new-tokens", "12", "--teacher-top-k", "64",
            "--eval-tokens", "12", "--draft-tokens", "4", "--threads", "1", "--lr", "1e-3", "--warmup-steps", "2",
            *extra]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("distill-prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def distilled(tiny_models, prompts_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distill") / "run"
    assert main(distill_args(tiny_models.target_dir, out, prompts_file, "--max-steps", str(STEPS),
                             "--quant", "f32,q8_0", "--max-minutes", "0")) == 0
    return out


def test_outputs_and_report(distilled):
    assert (distilled / "draft.gguf").is_file() and (distilled / "draft-q8_0.gguf").is_file()
    assert (distilled / "student" / "config.json").is_file() and (distilled / "checkpoint.pt").is_file()
    assert not [p for p in distilled.rglob("*") if "partial" in p.name or p.name.startswith("untrained-")]
    report = json.loads((distilled / "report.json").read_text())
    assert report["training"]["steps"] == STEPS and len(report["training"]["losses"]) == STEPS
    assert report["student"]["layers_kept"] == [0]
    drafts = {d["draft"]: d for d in report["drafts"]}
    assert {"untrained", "distilled", "distilled-q8_0"} <= set(drafts)
    for figures in drafts.values():
        assert 0 <= figures["acceptance"] <= 1
        assert 0 <= figures["mean_accepted_length"] <= report["draft_tokens"]
        assert figures["tokens_per_round"] == pytest.approx(figures["mean_accepted_length"] + 1, abs=0.5)
        assert figures["draft_tokens_per_s"] > 0 and figures["predicted_speedup"] > 0
    ratios = report["ratios"]
    assert ratios["mean_accepted_length_distilled_over_untrained"] == pytest.approx(
        drafts["distilled"]["mean_accepted_length"] / drafts["untrained"]["mean_accepted_length"], rel=1e-2)
    assert len(report["heldout_prompts"]) == 2 and set(report["heldout_prompts"]) <= set(PROMPTS)


def test_loss_decreases(distilled):
    losses = [loss for _, loss in json.loads((distilled / "report.json").read_text())["training"]["losses"]]
    first, last = np.mean(losses[:6]), np.mean(losses[-6:])
    assert last < 0.8 * first, losses


def test_f32_gguf_greedy_equals_the_students_greedy_in_transformers(distilled):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(distilled / "student", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(distilled / "student")
    llm = load_llama(distilled / "draft.gguf")
    try:
        for text in PROMPTS[:4]:
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            expected = []
            with torch.inference_mode():
                for _ in range(20):
                    logits = student(torch.tensor([prompt + expected])).logits[0, -1]
                    expected.append(int(logits.argmax()))
            llm.reset()
            llm.eval(prompt)
            got = []
            for _ in range(20):
                got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval([got[-1]])
            assert got == expected, text
    finally:
        llm.close()


async def _hybrid(address: str, drafter, prompt: list[int]):
    from edge.client import CloudClient

    return await generate_ids(CloudClient(address), drafter, prompt, 30)


def test_hybrid_with_the_distilled_draft_is_the_targets_greedy_output(distilled, tiny_cloud, tiny_target):
    from edge.llama_drafter import LlamaDrafter

    drafter = LlamaDrafter(distilled / "draft-q8_0.gguf", n_ctx=512, threads=1)
    try:
        drafted = 0
        for text in PROMPTS[:3]:
            prompt = drafter.tokenize(text)
            generation = asyncio.run(_hybrid(tiny_cloud.address, drafter, prompt))
            assert generation.token_ids == hf_greedy(tiny_target, prompt, 30)
            drafted += generation.stats.drafted
        assert drafted > 0
    finally:
        drafter.close()


# -- bad input: a clear error, and nothing written to --out --------------------------------------


@pytest.fixture(scope="module")
def other_tokenizer_student(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("other-tokenizer")
    return build_tiny_target(root / "student", tiny_sentencepiece_tokenizer_dir(root / "tokenizer"), seed=1)


@pytest.mark.parametrize("case", ["student-llama-cpp-cannot-run", "layers-too-many", "layers-zero", "out-unwritable",
                                  "empty-prompts", "out-not-empty", "resume-without-checkpoint", "data-wrong-format",
                                  "data-empty-dir", "data-missing"])
def test_bad_input_is_refused_before_anything_is_written(case, tiny_models, prompts_file, tmp_path, capsys,
                                                         request):
    out = tmp_path / "out"
    prompts = prompts_file
    extra: list[str] = []
    if case == "student-llama-cpp-cannot-run":
        # Another tokenizer is fine (string-level distillation), but this one's SentencePiece files
        # lack what the GGUF converter needs: the edge could never run the draft.
        args = distill_args(tiny_models.target_dir, out, prompts)
        args[args.index("--layers"):args.index("--layers") + 2] = ["--student",
                                                                   str(request.getfixturevalue("other_tokenizer_student"))]
        message = "the student cannot be exported as a llama.cpp draft"
    elif case.startswith("data-"):
        logs = tmp_path / "logs"
        if case != "data-missing":
            logs.mkdir()
        if case == "data-wrong-format":
            (logs / "answers-000001.jsonl").write_text('{"prompt": "hi", "reply": "hello"}\n')
        message = {"data-wrong-format": "line 1 is not a kept answer", "data-empty-dir": "holds no kept answers",
                   "data-missing": "not a directory of kept answers"}[case]
        args = distill_args(tiny_models.target_dir, out, prompts, "--data", str(logs))
    else:
        if case == "layers-too-many":
            extra, message = ["--layers", "2"], "--layers must be between 1 and 1"
        elif case == "layers-zero":
            extra, message = ["--layers", "0"], "--layers must be between 1 and 1"
        elif case == "out-unwritable":
            (tmp_path / "a-file").write_text("")
            out, message = tmp_path / "a-file" / "out", "cannot be written"
        elif case == "empty-prompts":
            prompts = tmp_path / "empty.txt"
            prompts.write_text("\n \n")
            message = "holds no prompt"
        elif case == "out-not-empty":
            out.mkdir()
            (out / "something").write_text("x")
            message = "is not empty"
        else:
            extra, message = ["--resume"], "no checkpoint.pt"
        args = distill_args(tiny_models.target_dir, out, prompts) + extra  # a repeated flag: the last wins
    before = sorted(out.rglob("*")) if out.exists() else None
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert (sorted(out.rglob("*")) if out.exists() else None) == before


# -- interrupt and resume; data parallel ----------------------------------------------------------


# `tandem ARGS` as a terminal's Ctrl-C reaches it. A shell starts background jobs (a CI script's
# `make test &`, say) with SIGINT ignored, every child inherits that, and Python then never
# raises KeyboardInterrupt: the interrupted run would go on training.
TANDEM_INTERRUPTIBLE = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "from tandem.cli import main; sys.exit(main())")


def _run(args: list[str], **kwargs) -> subprocess.Popen:
    # PYTHONFAULTHANDLER: a run that hangs can be made to print every thread's stack (SIGABRT).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen([sys.executable, "-c", TANDEM_INTERRUPTIBLE, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _losses(out: Path) -> list:
    return json.loads((out / "training.json").read_text())["losses"]


def test_interrupted_training_resumes_from_the_last_checkpoint(tiny_models, prompts_file, tmp_path):
    common = ["--no-export", "--checkpoint-every", "2", "--max-minutes", "0"]
    interrupted = tmp_path / "interrupted"
    process = _run(distill_args(tiny_models.target_dir, interrupted, prompts_file, *common, "--max-steps", "1000"))
    deadline = time.monotonic() + 300
    while not ((interrupted / "training.json").is_file() and len(_losses(interrupted)) >= 4):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    try:
        assert process.wait(60) == 130
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # where it hangs, for the failure message
        process.wait(30)
        raise AssertionError(f"no exit within 60 s of SIGINT:\n{process.stdout.read()[-6000:]}") from None
    checkpointed = len(_losses(interrupted))
    total = checkpointed + 3
    resumed = _run(distill_args(tiny_models.target_dir, interrupted, prompts_file, *common, "--resume",
                                "--max-steps", str(total)))
    straight = tmp_path / "straight"
    uninterrupted = _run(distill_args(tiny_models.target_dir, straight, prompts_file, *common,
                                      "--max-steps", str(total)))
    assert resumed.wait(300) == 0, resumed.stdout.read()
    assert uninterrupted.wait(300) == 0, uninterrupted.stdout.read()
    state = json.loads((interrupted / "training.json").read_text())
    assert state["resumed_from"] == [checkpointed] and state["step"] == total
    # Same data, same optimizer state: the resumed run continues exactly where the other one goes.
    got, expected = np.array(state["losses"]), np.array(_losses(straight))
    assert got[:, 0].tolist() == expected[:, 0].tolist()
    np.testing.assert_allclose(got[:, 1], expected[:, 1], rtol=1e-4)


def test_torchrun_two_gloo_processes_match_one_process(tiny_models, prompts_file, tmp_path):
    """Two CPU processes (gloo) split each batch; the loss per step must match one process on the same
    data within 1e-4 relative: only float summation order differs (batch split, all-reduce)."""
    common = ["--no-export", "--max-steps", "3", "--max-minutes", "0", "--on-policy", "0.5"]
    single = _run(distill_args(tiny_models.target_dir, tmp_path / "one", prompts_file, *common))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parallel = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tandem",
         *distill_args(tiny_models.target_dir, tmp_path / "two", prompts_file, *common)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert single.wait(300) == 0, single.stdout.read()
    assert parallel.wait(300) == 0, parallel.stdout.read()
    one, two = np.array(_losses(tmp_path / "one")), np.array(_losses(tmp_path / "two"))
    assert len(one) == len(two) == 3
    np.testing.assert_allclose(two[:, 1], one[:, 1], rtol=1e-4)
