"""`--dtype auto|fp32|bf16`: what auto picks, and clear refusals (cloud/dtype.py).

The hardware rules are driven with given CPU flags (a test cannot swap this machine's CPU); the
model refusal loads a real tiny model whose logits overflow float16's range, and the command
line refuses it with the reason and exit code 2.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from cloud import dtype as dtypes
from common.errors import InvalidArgument

AMX = {"fpu", "avx512f", "amx_tile", "amx_bf16"}
AVX512_BF16 = {"fpu", "avx512f", "avx512_bf16"}
PLAIN = {"fpu", "avx2", "fma"}


@pytest.mark.parametrize("flags,expected", [(AMX, "bfloat16"), (AVX512_BF16, "bfloat16"), (PLAIN, "float32"),
                                            (set(), "float32")])
def test_auto_picks_bf16_only_where_the_cpu_runs_it(flags, expected):
    assert dtypes.resolve("auto", "cpu", "m", flags=flags) == expected


@pytest.mark.parametrize("requested,expected", [("fp32", "float32"), ("float32", "float32"), ("bf16", "bfloat16"),
                                                ("fp64", "float64"), ("float64", "float64")])
def test_explicit_dtypes_on_a_capable_cpu(requested, expected):
    assert dtypes.resolve(requested, "cpu", "m", flags=AMX) == expected


@pytest.mark.parametrize("requested", ["bf16", "bfloat16", "fp16"])
def test_refuses_a_reduced_dtype_the_cpu_cannot_run(requested):
    with pytest.raises(InvalidArgument) as refused:
        dtypes.resolve(requested, "cpu", "SmolLM2-135M", flags=PLAIN)
    message = str(refused.value)
    assert f"--dtype {requested}" in message and "SmolLM2-135M" in message  # names the dtype and the model
    assert "neither" in message and "float32" in message  # says why, and what to pass instead


def test_float32_and_float64_run_on_any_cpu():
    assert dtypes.resolve("fp32", "cpu", "m", flags=set()) == "float32"
    assert dtypes.resolve("fp64", "cpu", "m", flags=set()) == "float64"


def test_cuda_rules():
    assert dtypes.resolve("auto", "cuda", "m", cuda_bf16=True) == "bfloat16"
    assert dtypes.resolve("auto", "cuda", "m", cuda_bf16=False) == "float32"
    with pytest.raises(InvalidArgument, match="does not support bfloat16"):
        dtypes.resolve("bf16", "cuda", "m", cuda_bf16=False)


def test_cpu_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert dtypes.cpu_flags(cpuinfo) == {"fpu", "avx512f", "amx_bf16"}
    assert dtypes.cpu_flags(tmp_path / "absent") == frozenset()


@pytest.fixture(scope="module")
def overflowing_target(tmp_path_factory):
    """A tiny real target whose logits (~1e6) overflow float16 (max 65,504) but not bfloat16."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.tiny_models import build_tiny_target, smollm2_tokenizer_dir

    root = tmp_path_factory.mktemp("overflow")
    out = build_tiny_target(root / "overflowing-target", smollm2_tokenizer_dir(root), seed=5)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(1e6)
    model.save_pretrained(out)
    return out


def test_refuses_a_dtype_the_model_cannot_run(overflowing_target):
    from cloud.model import LoadOptions, TargetModel

    flags = dtypes.cpu_flags()
    with pytest.raises(InvalidArgument) as refused:
        TargetModel.load(str(overflowing_target), LoadOptions(device="cpu", dtype="fp16", threads=1))
    message = str(refused.value)
    assert "--dtype fp16" in message and overflowing_target.name in message
    if set(dtypes.HARDWARE_FLAGS["float16"]) & flags:  # the CPU runs float16: the model is what refuses
        assert "non-finite logits" in message
    else:
        assert "neither" in message
    assert TargetModel.load(str(overflowing_target), LoadOptions(device="cpu", threads=1)).model.dtype \
        == torch_float32()


def torch_float32():
    import torch

    return torch.float32


@pytest.mark.skipif(not set(dtypes.HARDWARE_FLAGS["bfloat16"]) & dtypes.cpu_flags(),
                    reason="this CPU has neither AMX nor AVX512-BF16")
def test_bf16_loads_and_answers_here(overflowing_target):
    """Where the CPU has it, bf16 loads (this model's logits fit bf16's range) and gives finite logits."""
    from cloud.model import LoadOptions, TargetModel

    target = TargetModel.load(str(overflowing_target), LoadOptions(device="cpu", dtype="bf16", threads=1))
    assert str(target.model.dtype) == "torch.bfloat16" and target.gives_finite_logits()


@pytest.mark.skipif(not set(dtypes.HARDWARE_FLAGS["bfloat16"]) & dtypes.cpu_flags(),
                    reason="this CPU has neither AMX nor AVX512-BF16")
def test_pass_size_follows_the_dtype_unless_given(overflowing_target):
    """--max-batch-tokens 0 (the default) takes the measured size for the weights' dtype; a value wins."""
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud
    from cloud.model import LoadOptions, TargetModel

    for dtype, given, expected in (("fp32", 0, dtypes.FULL_PRECISION_BATCH_TOKENS),
                                   ("bf16", 0, dtypes.BATCH_TOKENS["bfloat16"]), ("bf16", 96, 96)):
        target = TargetModel.load(str(overflowing_target), LoadOptions(device="cpu", dtype=dtype, threads=1))
        config = CloudConfig(host="127.0.0.1", port=0, max_batch_tokens=given)
        with EmbeddedCloud(config, target) as cloud:
            assert cloud.running.worker.max_batch_tokens == expected, (dtype, given)


def test_the_command_line_refuses_with_the_reason(overflowing_target):
    """`tandem cloud --dtype fp16` on a model that overflows it (or a CPU without it): exit 2, one line why."""
    done = subprocess.run([sys.executable, "-m", "tandem", "cloud", "--port", "0", "--threads", "1",
                           "--model", str(overflowing_target), "--dtype", "fp16"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "tandem: error: --dtype fp16" in done.stderr and overflowing_target.name in done.stderr


def test_dtype_agreement_bench_counts_and_float64_batching_identity(tmp_path, overflowing_target):
    """bench/dtype_agreement.py on a tiny real model: consistent counts; at float64 a batched answer is
    the answer alone, token for token, and blocks agree with one-by-one everywhere."""
    import json

    from bench import dtype_agreement

    assert dtype_agreement.main(["--model", str(overflowing_target), "--prompts", "3", "--tokens", "6",
                                 "--dtypes", "float64,bfloat16" if dtypes.cpu_flags() & {"amx_bf16", "avx512_bf16"}
                                 else "float64,float32", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "dtype_agreement.json").read_text())
    exact = report["dtypes"]["float64"]
    assert exact["batched_vs_alone"]["identical"] == exact["batched_vs_alone"]["answers"] == 3
    blocks = exact["blocks_vs_one_by_one"]
    assert blocks["agree"] == blocks["positions"] > 0
    (versus,) = report["vs_alone"].values()
    assert 0 <= versus["identical"] <= versus["answers"] == 3
    assert 0 <= versus["tokens_before_first_difference"] <= versus["tokens"] <= 18


def test_pass_sizes_bench_and_its_rule(tmp_path, overflowing_target):
    """bench/pass_sizes.py runs the cloud's pass at each size; pays_up_to stops where a step gains too little."""
    import json

    from bench import pass_sizes

    rows = [{"tokens": 9, "tokens_per_s": 70}, {"tokens": 18, "tokens_per_s": 130},
            {"tokens": 36, "tokens_per_s": 140}, {"tokens": 72, "tokens_per_s": 300}]
    assert pass_sizes.pays_up_to(rows, 0.10) == 18  # 130 -> 140 is under 10%: stop there
    assert pass_sizes.main(["--model", str(overflowing_target), "--dtypes", "float32", "--sizes", "9,20",
                            "--repeats", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "pass_sizes.json").read_text())
    assert [r["tokens"] for r in report["dtypes"]["float32"]["rows"]] == [9, 20]
    assert all(r["ms"] > 0 for r in report["dtypes"]["float32"]["rows"])
