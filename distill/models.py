"""Teacher and student for distillation: the module that touches transformers.

The teacher is the target exactly as the cloud loads it (cloud/model.py). The student is either
a layer-pruned copy of it (same embeddings, LM head and tokenizer, so the token space is the
target's by construction) or an existing model (an HF directory or a GGUF, by default the
default draft's checkpoint), whose tokenizer may differ from the target's (then training is
string-level, distill/cross.py). Both are converted to GGUF at the end, so the student must be a
Llama.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from cloud.model import LoadOptions, TargetModel
from common.errors import InvalidArgument
from edge.chat_template import render_chat
from edge.convert import SUPPORTED_ARCHITECTURES


def load_teacher(path: str | None, device: str, threads: int) -> TargetModel:
    """The target in float32 (its logits are the training signal), without gradients."""
    teacher = TargetModel.load(path, LoadOptions(device=device, dtype="float32", threads=threads))
    teacher.model.requires_grad_(False)
    return teacher


def kept_layers(total: int, keep: int) -> list[int]:
    """Which of the target's `total` decoder layers a `keep`-layer student keeps.

    Evenly spaced, always the first and the last: the first layers build token features and the
    last maps them onto the LM head the student shares, while neighbouring middle layers are the
    most alike (Gromov et al. 2024, arXiv 2403.17887), so spacing the kept ones spreads the loss.
    One layer keeps the first.
    """
    if not 1 <= keep < total:
        raise InvalidArgument(f"--layers must be between 1 and {total - 1} (the target has {total} decoder "
                              f"layers), got {keep}")
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def pruned_student(teacher: TargetModel, keep: int) -> tuple[torch.nn.Module, list[int]]:
    """A copy of the target with `keep` decoder layers (see kept_layers); returns (model, kept ids)."""
    config = copy.deepcopy(teacher.model.config)
    layers = kept_layers(config.num_hidden_layers, keep)
    _check_architecture(config, "the target")
    config.num_hidden_layers = len(layers)
    # The cloud routes the target's attention through its paged KV pool under a registered name
    # (cloud/model.py); the student is an ordinary model, saved for other processes to load.
    config._attn_implementation = config._attn_implementation.removeprefix("tandem_paged_")
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    source = teacher.model.state_dict()
    renamed = {}
    for name, tensor in source.items():
        if name.startswith("model.layers."):
            index, rest = name[len("model.layers."):].split(".", 1)
            if int(index) not in layers:
                continue
            name = f"model.layers.{layers.index(int(index))}.{rest}"
        renamed[name] = tensor.detach().clone()
    missing, unexpected = student.load_state_dict(renamed, strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise InvalidArgument(f"cannot prune the target: missing {missing}, unexpected {unexpected}")
    student.tie_weights()
    student.generation_config = copy.deepcopy(teacher.model.generation_config)
    return student.to(teacher.device), layers


def load_student(path: str | Path | None, teacher: TargetModel) -> TargetModel:
    """An existing model as the student: an HF directory or a GGUF (None: the default draft's
    checkpoint, SmolLM2-135M-Instruct), loaded as the cloud loads a target (a GGUF is dequantized
    once into a cached safetensors copy), in float32 on the teacher's device.

    Its tokenizer may differ from the target's: `same_tokenizer(student, teacher)` then says False
    and training is string-level (distill/cross.py). It must be an architecture the built-in GGUF
    converter exports (a Llama).
    """
    if path is not None:
        source = Path(path)
        if source.is_dir() and not (source / "config.json").is_file():
            raise InvalidArgument(f"--student {path}: not a Hugging Face model directory (no config.json)")
        if not source.exists():
            raise InvalidArgument(f"--student {path}: no such file or directory")
        if source.is_file() and source.suffix != ".gguf":
            raise InvalidArgument(f"--student {path}: give a Hugging Face model directory or a .gguf file")
    try:
        student = TargetModel.load(None if path is None else str(path),
                                   LoadOptions(device=str(teacher.device), dtype="float32",
                                               threads=torch.get_num_threads()))
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidArgument(f"--student {path}: cannot be loaded as a causal language model: {exc}") from None
    _check_architecture(student.model.config, f"--student {path}")
    if same_tokenizer(student, teacher) and student.vocab_size < len(teacher.tokenizer):
        raise InvalidArgument(f"--student {path}: its vocabulary is smaller than the target's tokenizer")
    student.model.requires_grad_(True)
    return student


def same_tokenizer(student: TargetModel, teacher: TargetModel) -> bool:
    """The student writes the target's token ids (vocabulary, BOS/EOS rules and probe ids alike):
    token-level losses apply; otherwise the two meet at the string level only."""
    return student.fingerprint == teacher.fingerprint


def _check_architecture(config, what: str) -> None:
    if not set(config.architectures or []) & set(SUPPORTED_ARCHITECTURES):
        raise InvalidArgument(f"{what} is a {', '.join(config.architectures or ['?'])}; the draft is exported "
                              f"through the built-in GGUF converter, which takes {', '.join(SUPPORTED_ARCHITECTURES)}")


@torch.inference_mode()
def decode_seconds(model, prompt: Sequence[int], steps: int) -> float:
    """Seconds per one-token greedy decode step of `model` on a KV cache after `prompt`."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=torch.tensor([list(prompt)], device=device), cache=cache, use_cache=True,
                   logits_to_keep=1).logits
    started = time.perf_counter()
    for _ in range(steps):
        token = logits[:, -1].argmax(-1, keepdim=True)
        logits = model(input_ids=token, cache=cache, use_cache=True).logits
    return (time.perf_counter() - started) / steps


def save_student(student: torch.nn.Module, tokenizer, out_dir: Path) -> Path:
    """The student as an HF directory with its tokenizer (the target's, for a pruned student;
    written aside, then renamed)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bar for writing one small shard is noise
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    student.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def encode_prompts(teacher: TargetModel, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt, as a user message in the target's chat template when `chat`
    (rendered as the edge renders it, edge/chat_template.py)."""
    if chat:
        return [teacher.tokenize(render_chat(teacher.chat_template, [{"role": "user", "content": p}]))
                for p in prompts]
    return [teacher.encode(p) for p in prompts]  # with BOS where the tokenizer wants one (Gemma does)


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float,
             seeds: Sequence[int], stop_ids: set[int]) -> list[list[int]]:
    """Continuations of every prompt in one left-padded batch, up to and including a stop token.

    Each row samples with its own seeded generator (temperature 0: greedy), so a row's
    continuation does not depend on which other rows share its batch (or its process).
    """
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    outputs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_new_tokens):
        chosen = _pick(logits.float().cpu(), temperature, generators)
        for row, token in enumerate(chosen):
            if not done[row]:
                outputs[row].append(token)
                done[row] = token in stop_ids
        if all(done):
            break
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=-1)
        positions = positions[:, -1:] + 1
        step = torch.tensor(chosen, device=device)[:, None]
        logits = model(input_ids=step, attention_mask=mask, position_ids=positions, cache=cache,
                       use_cache=True).logits[:, -1]
    return outputs


def _pick(logits: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> list[int]:
    """logits: [rows, vocab] -> one token per row."""
    if temperature <= 0:
        return logits.argmax(-1).tolist()
    probs = torch.softmax(logits / temperature, dim=-1)
    return [int(torch.multinomial(probs[row], 1, generator=g)) for row, g in enumerate(generators)]


def right_padded(sequences: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [rows, width], attention mask [rows, width]) with the sequences left-aligned."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    return ids.to(device), mask.to(device)
