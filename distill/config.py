"""Distillation settings, declared once (common/settings.py) and importable without torch (so
`tandem --help` stays light). TrainConfig is what training depends on (it is saved with each
checkpoint's recipe); RunConfig is how a run gets its data and reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.settings import setting
from edge.speculation_config import SpeculationConfig

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
WEIGHT_TYPES = ("f32", "f16", "q8_0", "q4_k_m", "q4_1")
"""What --quant offers: unquantized F32 or F16, or one of llama.cpp's quantizations."""

DATA = "data"
TRAINING = "training"
REPORT = "export and report"


@dataclass(frozen=True)
class TrainConfig:
    divergence: str = setting("jsd", "token-level divergence to the target's distribution (temperature 1)",
                              choices=DIVERGENCES, group=TRAINING)
    on_policy: float = setting(0.5, "share of each batch continued by the student (then scored by the target)",
                               low=0, high=1, group=DATA)
    batch_size: int = setting(8, "sequences per step, over all processes", low=1, group=TRAINING)
    new_tokens: int = setting(64, "tokens generated per training sequence", low=1, group=DATA)
    temperature: float = setting(1.0, "sampling temperature of the generated training text (0: greedy)",
                                 low=0, group=DATA)
    teacher_top_k: int = setting(0, "keep the target's top-k probabilities only (plus the rest's mass); 0: all",
                                 low=0, group=TRAINING)
    lr: float = setting(2e-4, "AdamW learning rate (after a linear warmup)", low=0, low_open=True, group=TRAINING)
    warmup_steps: int = setting(10, "steps of the learning rate's linear warmup", low=0, group=TRAINING)
    max_steps: int = setting(0, "stop after this many steps; 0: no limit", low=0, group=TRAINING)
    max_minutes: float = setting(60.0, "training time budget in minutes, over resumed runs too; 0: no limit",
                                 low=0, group=TRAINING)
    uld_weight: float = setting(0.0, "across tokenizers: weight of the Universal Logit Distillation loss "
                                     "(Boizard et al. 2024) added to the sequence-level one; 0: off",
                                low=0, group=TRAINING)
    checkpoint_every: int = setting(25, "steps between checkpoints", low=1, group=TRAINING)
    seed: int = setting(0, "seed of the data split, the generated text and the student's initialization",
                        group=TRAINING)


@dataclass(frozen=True)
class RunConfig:
    prompts: str | None = setting(None, "prompts, one per line or JSONL with \"prompt\" (default: a small set "
                                        "shipped with tandem)", metavar="FILE", group=DATA)
    data: str | None = setting(None, "answers kept by the edge (--keep-answers DIR): train on them, alone, or "
                                     "mixed with generated data when --prompts is given too", metavar="DIR",
                               group=DATA)
    heldout: int = setting(8, "prompts kept out of training, for the report", low=1, group=DATA)
    chat: bool = setting(True, "use prompts as raw text instead of user messages in the target's chat template "
                               "(the shipped set is then raw openings: for a pretrained target such as the Gemma "
                               "of `make gemma`)", flag="--no-chat", group=DATA)
    resume: bool = setting(False, "continue from DIR/checkpoint.pt", group=TRAINING)
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...", group=TRAINING)
    threads: int = setting(0, "torch threads; 0 = the CPUs this process may run on", low=0, group=TRAINING)
    quant: str = setting("q4_k_m", f"weights of DIR/draft.gguf: one of {', '.join(WEIGHT_TYPES)}; more, "
                                   "comma-separated, are written as DIR/draft-TYPE.gguf and reported too", group=REPORT)
    draft_tokens: int = setting(SpeculationConfig().draft_tokens, "block length for the report's mean accepted length (the edge's default)",
                                low=1, group=REPORT)
    eval_tokens: int = setting(64, "target tokens per held-out prompt in the report", low=1, group=REPORT)
    overwrite_worse: bool = setting(False, "replace an existing DIR/draft.gguf even when the new draft accepts "
                                           "less of the target's text than it", group=REPORT)
    export: bool = setting(True, "train and checkpoint only (no student directory, GGUF or report)",
                           flag="--no-export", group=REPORT)
