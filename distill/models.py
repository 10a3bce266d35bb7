"""Teacher and student for distillation: the module that touches transformers.

The teacher is the target exactly as the cloud loads it (cloud/model.py). The student is either
a layer-pruned copy of it (same embeddings, LM head and tokenizer, so the token space is the
target's by construction) or an existing Hugging Face model whose tokenizer fingerprint equals
the target's. Both are converted to GGUF at the end, so the student must be a Llama.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from cloud.model import LoadOptions, TargetModel
from common.errors import InvalidArgument
from common.text_tokenizer import TextTokenizer
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


def load_student(path: str | Path, teacher: TargetModel) -> torch.nn.Module:
    """An existing HF model as the student, refused unless it tokenizes exactly like the target."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InvalidArgument(f"--student {path}: not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    fingerprint = TextTokenizer(tokenizer).fingerprint  # vocabulary, BOS/EOS rules and probe ids
    if fingerprint != teacher.fingerprint:
        raise InvalidArgument(
            f"--student {path}: its tokenizer differs from the target's (fingerprint {fingerprint} vs "
            f"{teacher.fingerprint}); a draft must produce the target's token ids. Use a student from the "
            "target's family, or --layers N for a pruned copy of the target."
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    _check_architecture(model.config, f"--student {path}")
    if model.get_output_embeddings().weight.shape[0] < len(teacher.tokenizer):
        raise InvalidArgument(f"--student {path}: its vocabulary is smaller than the target's tokenizer")
    return model.to(teacher.device)


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


def save_student(student: torch.nn.Module, teacher: TargetModel, out_dir: Path) -> Path:
    """The student as an HF directory with the target's tokenizer (written aside, then renamed)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bar for writing one small shard is noise
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    student.save_pretrained(partial, safe_serialization=True)
    teacher.tokenizer.save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def encode_prompts(teacher: TargetModel, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt, as a user message in the target's chat template when `chat`
    (rendered as the edge renders it, edge/chat_template.py)."""
    if chat:
        return [teacher.tokenize(render_chat(teacher.chat_template, [{"role": "user", "content": p}]))
                for p in prompts]
    return [teacher.tokenize(p) for p in prompts]


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
