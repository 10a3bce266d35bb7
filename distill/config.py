"""Distillation settings, importable without torch (so `tandem --help` stays light)."""

from __future__ import annotations

from dataclasses import dataclass

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
WEIGHT_TYPES = ("f32", "f16", "q8_0", "q4_k_m")
"""What --quant offers: unquantized F32 or F16, or one of llama.cpp's quantizations."""


@dataclass(frozen=True)
class TrainConfig:
    divergence: str = "jsd"
    on_policy: float = 0.5  # share of each batch continued by the student
    batch_size: int = 8  # sequences per optimizer step, over all processes
    new_tokens: int = 64  # generated per sequence
    temperature: float = 1.0  # for generating the training text (0: greedy)
    teacher_top_k: int = 0  # 0: the full distribution; else top-k plus the rest's mass
    lr: float = 2e-4
    warmup_steps: int = 10
    max_steps: int = 0  # 0: no limit (the time budget decides)
    max_minutes: float = 60.0  # 0: no limit
    checkpoint_every: int = 25
    seed: int = 0
