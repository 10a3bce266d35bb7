"""Which dtype the target's weights run in: `--dtype auto|fp32|bf16` (and float16, float64).

Why bf16 only where the CPU has it. With AMX or AVX512-BF16, torch's bf16 matmuls run on
hardware made for them, and a cloud verifying many sessions' blocks in one pass gains most
(measured here: a 16×9-token pass 526 ms in bf16 against 1,250 ms in fp32). Without them torch
emulates bf16 in software, slower than fp32, so `auto` picks bf16 only on such a CPU (or a
CUDA device that supports it) and asking for it elsewhere is refused with the reason.

What "exact" means at each dtype (README: Precision): at float32 and float64 the cloud's
answer to a prompt does not depend on the other sessions in its passes (float64: bit for bit,
tests/test_batching.py); at bfloat16 it is the target's own bf16 greedy choice at every
position, but a token whose top two logits lie within bf16's rounding may change with how
the pass is batched (bench/dtype_agreement.py measures how often).

Kept free of torch so `tandem cloud --help` and the refusals stay instant.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from common.errors import InvalidArgument

CHOICES = ("auto", "fp32", "bf16", "fp16", "fp64", "float32", "bfloat16", "float16", "float64")
# --greedy-head (cloud/greedy_head.py): how greedy ids are taken from a float32 head.
GREEDY_HEAD_CHOICES = ("auto", "screened", "full")
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}
# CPU flags (/proc/cpuinfo) under which torch runs each reduced dtype on hardware made for it.
HARDWARE_FLAGS = {"bfloat16": ("amx_bf16", "avx512_bf16"), "float16": ("amx_fp16", "avx512_fp16")}
# --max-batch-tokens 0 picks by dtype (bench/pass_sizes.py, README "Larger passes"): float32 passes
# gain nothing per token past 144-256 tokens, while bfloat16 ones still gain >= 10% per doubling up
# to 512, and there hybrid capacity rose from 33 to 40 sessions at 20 ms (`tandem bench --capacity`).
BATCH_TOKENS = {"bfloat16": 512, "float16": 512}
FULL_PRECISION_BATCH_TOKENS = 256


def canonical(name: str) -> str:
    """The torch name of a --dtype value ("bf16" -> "bfloat16"); "auto" stays "auto"."""
    return _ALIASES.get(name, name)


def batch_tokens(dtype_name: str | None) -> int:
    """The default tokens per forward pass for weights of `dtype_name` (None: an engine that does not say)."""
    return BATCH_TOKENS.get(dtype_name or "", FULL_PRECISION_BATCH_TOKENS)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo is absent, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve(requested: str, device_type: str, model_name: str, *, flags: Collection[str] = (),
            cuda_bf16: bool = False) -> str:
    """The dtype to load `model_name` in on a `device_type` ("cpu" or "cuda") device.

    auto: bfloat16 on a CUDA device that supports it or a CPU with AMX / AVX512-BF16, else float32.
    An explicit reduced dtype the hardware cannot run natively is refused (InvalidArgument) with
    the reason and what to pass instead; float32 and float64 run everywhere.
    """
    dtype = canonical(requested)
    if dtype not in (*_ALIASES.values(), "auto"):
        raise InvalidArgument(f"--dtype {requested}: unknown dtype (choose from {', '.join(CHOICES)})")
    if device_type == "cuda":
        if dtype == "auto":
            return "bfloat16" if cuda_bf16 else "float32"
        if dtype == "bfloat16" and not cuda_bf16:
            raise InvalidArgument(f"--dtype {requested}: this CUDA device does not support bfloat16, so "
                                  f"{model_name} cannot run in it; use --dtype float32 or float16")
        return dtype
    if dtype == "auto":
        return "bfloat16" if runs_natively("bfloat16", flags) else "float32"
    needs = HARDWARE_FLAGS.get(dtype)
    if needs and not _has_any(flags, needs):
        raise InvalidArgument(
            f"--dtype {requested}: this CPU has neither {' nor '.join(needs)}, so torch would emulate {dtype} "
            f"in software, slower than float32, for {model_name}; use --dtype float32 (or auto)")
    return dtype


def refuse_non_finite(requested: str, dtype: str, model_name: str) -> None:
    """A model that cannot run in `dtype`: its probe pass gave inf or NaN logits (the range overflowed)."""
    raise InvalidArgument(
        f"--dtype {requested}: {model_name} gives non-finite logits in {dtype} (its activations overflow "
        f"{dtype}'s range), so it cannot run in it; use --dtype float32"
        + (" or bfloat16" if dtype == "float16" else ""))


def runs_natively(dtype: str, flags: Collection[str] | None = None) -> bool:
    """Whether a CPU with `flags` (default: this one's) has hardware for the reduced `dtype`
    ("bfloat16" or "float16")."""
    return _has_any(cpu_flags() if flags is None else flags, HARDWARE_FLAGS[dtype])


def _has_any(flags: Collection[str], wanted: Collection[str]) -> bool:
    return any(flag in flags for flag in wanted)
