"""The distillation loop: generate text on the fly, score it with the teacher, fit the student.

Each step takes the next batch of training prompts and continues them: most rows with the
teacher's own continuations (sequence-level KD, Kim & Rush 2016), a share (`on_policy`) with the
student's, which the teacher then scores (on-policy distillation; DistillSpec, arXiv 2310.08461,
finds this data matters most for acceptance). The student is fitted to the teacher's next-token
distribution at every position of those sequences (distill/losses.py).

Everything a step does is a function of (seed, step): its prompts, which rows are on-policy and
each row's sampling seed. So a run resumed from a checkpoint continues exactly as an
uninterrupted one would, and a data-parallel run under torchrun sees the same data as a
single process: rank r takes rows r, r + world, ... of each global batch; the loss is summed
and divided by the whole batch's position count, so DDP's gradient average equals the
single-process gradient. The same code runs in one process or many; torchrun (or accelerate
launch) starts the processes and sets the environment that `init_distributed` reads.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from common.errors import InvalidArgument
from distill.config import TrainConfig
from distill.losses import distillation_loss, top_k_teacher
from distill.models import generate, right_padded

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainState:
    step: int = 0
    elapsed_s: float = 0.0  # training time so far, over every resumed run
    positions: int = 0  # trained positions so far (all processes)
    losses: list = field(default_factory=list)  # [step, mean loss] per step
    resumed_from: list = field(default_factory=list)  # steps at which runs resumed


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Joins the process group torchrun / accelerate launch describe in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def distributed_device(device: torch.device) -> torch.device:
    """One GPU per process under torchrun (LOCAL_RANK); CPUs are shared."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


class Trainer:
    def __init__(self, teacher, student, prompts: list[list[int]], config: TrainConfig, out_dir: Path,
                 recipe: dict, place: Distributed, trainable: Callable[[str], bool] = lambda name: True,
                 answers: list[list[int] | None] | None = None):
        """prompts: the teacher's ids of each training prompt; answers: for each, the target's answer
        already known (kept by the edge, `--data`) as teacher ids, or None to generate one."""
        if config.batch_size % place.world:
            raise InvalidArgument(f"--batch-size {config.batch_size} must be a multiple of the process count "
                                  f"{place.world}")
        self.teacher, self.student, self.prompts = teacher, student, prompts
        self.answers = answers or [None] * len(prompts)
        self.config, self.out_dir, self.place = config, out_dir, place
        self.recipe = {**recipe, "train": asdict(config) | {"max_steps": None, "max_minutes": None}}
        self.stop_ids = set(teacher.eos_token_ids)
        self.vocab = min(len(teacher.tokenizer), teacher.vocab_size)
        for name, parameter in student.named_parameters():
            parameter.requires_grad_(trainable(name))
        self.parameters = {n: p for n, p in student.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(self.parameters.values(), lr=config.lr, weight_decay=0.0)
        self.model = student
        if place.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(student)
        self.state = TrainState()

    # -- data -------------------------------------------------------------------------------------

    def batch_plan(self, step: int) -> list[tuple[int, bool, int]]:
        """(prompt index, on-policy?, sampling seed) for every row of this step's global batch."""
        size = self.config.batch_size
        rows = []
        for i in range(step * size, (step + 1) * size):
            epoch, offset = divmod(i, len(self.prompts))
            order = list(range(len(self.prompts)))
            random.Random(f"{self.config.seed}:epoch:{epoch}").shuffle(order)
            rows.append(order[offset])
        on_policy = round(size * self.config.on_policy)
        chosen = set(random.Random(f"{self.config.seed}:policy:{step}").sample(range(size), on_policy))
        return [(p, row in chosen, random.Random(f"{self.config.seed}:row:{step}:{row}").getrandbits(31))
                for row, p in enumerate(rows)]

    def sequences(self, step: int) -> list[list[int]]:
        """This process's rows of the step: prompts with their generated continuations."""
        mine = self.batch_plan(step)[self.place.rank::self.place.world]
        out: list[list[int]] = [[] for _ in mine]
        for i, (p, _, _) in enumerate(mine):
            if self.answers[p] is not None:  # the target's answer is known: nothing to generate
                out[i] = list(self.prompts[p]) + list(self.answers[p])
        for on_policy, model in ((False, self.teacher.model), (True, self.student)):
            rows = [i for i, row in enumerate(mine) if row[1] == on_policy and not out[i]]
            if not rows:
                continue
            prompts = [self.prompts[mine[i][0]] for i in rows]
            was_training = model.training
            model.eval()
            continuations = generate(model, prompts, self.config.new_tokens, self.config.temperature,
                                     [mine[i][2] for i in rows], self.stop_ids)
            model.train(was_training)
            for i, prompt, continuation in zip(rows, prompts, continuations):
                out[i] = list(prompt) + continuation
        return out

    # -- one step ---------------------------------------------------------------------------------

    def train_step(self, step: int) -> float:
        ids, mask = right_padded(self.sequences(step), self.teacher.device)
        targets = mask[:, 1:].reshape(-1).bool()  # positions whose next token exists
        with torch.no_grad():
            teacher_logits = self.teacher.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            teacher_logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])[targets][:, : self.vocab]
            teacher = (top_k_teacher(teacher_logits, self.config.teacher_top_k) if self.config.teacher_top_k
                       else teacher_logits)
        self.model.train()
        student_logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        student_logits = student_logits.reshape(-1, student_logits.shape[-1])[targets][:, : self.vocab]
        per_position = distillation_loss(student_logits, teacher, self.config.divergence)
        return self.fit(per_position, step)

    def fit(self, per_position: torch.Tensor, step: int) -> float:
        """One optimizer step on this process's per-position losses; returns the batch's mean loss."""
        totals = torch.tensor([float(per_position.detach().sum()), float(per_position.numel())])
        if self.place.world > 1:
            dist.all_reduce(totals)
        # DDP averages gradients over processes: scaling by world makes the result the gradient of
        # (sum over the whole batch) / (positions in the whole batch), as in a single process.
        # A batch with no position to learn from (every answer empty) is a step of zero loss, not NaN.
        loss = per_position.sum() * self.place.world / totals[1].clamp(min=1)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * min(1.0, (step + 1) / max(1, self.config.warmup_steps))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.parameters.values()), 1.0)
        self.optimizer.step()
        self.state.positions += int(totals[1])
        return float(totals[0] / totals[1].clamp(min=1))

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, progress=None) -> TrainState:
        """Trains until max_steps or the time budget (whichever comes first), checkpointing as it goes."""
        config = self.config
        budget_s = config.max_minutes * 60 if config.max_minutes > 0 else float("inf")
        started, at_start = time.monotonic(), self.state.elapsed_s
        while (config.max_steps <= 0 or self.state.step < config.max_steps) and self.state.elapsed_s < budget_s:
            step_started, positions = time.monotonic(), self.state.positions
            loss = self.train_step(self.state.step)
            self.state.step += 1
            self.state.losses.append([self.state.step, round(loss, 6)])
            self.state.elapsed_s = at_start + time.monotonic() - started
            if progress is not None:
                progress(self.state, loss, time.monotonic() - step_started, self.state.positions - positions)
            if self.state.step % config.checkpoint_every == 0:
                self.save_checkpoint()
        self.save_checkpoint()
        return self.state

    # -- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Trainable weights, optimizer and progress, written aside and renamed (never half-written)."""
        if not self.place.main:
            return
        path = self.out_dir / CHECKPOINT
        partial = path.with_name(path.name + ".partial")
        torch.save({"recipe": self.recipe, "state": asdict(self.state),
                    "weights": {n: p.detach().cpu() for n, p in self.parameters.items()},
                    "optimizer": self.optimizer.state_dict()}, partial)
        os.replace(partial, path)
        (self.out_dir / "training.json").write_text(json.dumps(asdict(self.state)))

    def resume(self) -> None:
        """Continues from out_dir's checkpoint; refuses one made with another recipe."""
        path = self.out_dir / CHECKPOINT
        if not path.is_file():
            raise InvalidArgument(f"--resume: {self.out_dir} has no {CHECKPOINT} to resume from")
        saved = torch.load(path, map_location=self.teacher.device, weights_only=False)
        if saved["recipe"] != self.recipe:
            changed = sorted(k for k in set(saved["recipe"]) | set(self.recipe)
                             if saved["recipe"].get(k) != self.recipe.get(k))
            raise InvalidArgument(f"--resume: the checkpoint in {self.out_dir} was made with other settings "
                                  f"({', '.join(changed)}); rerun with the same ones, or use another --out")
        with torch.no_grad():
            for name, tensor in saved["weights"].items():
                self.parameters[name].copy_(tensor)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state = TrainState(**saved["state"])
        self.state.resumed_from.append(self.state.step)
        log.info("resuming at step %d (%.1f min trained)", self.state.step, self.state.elapsed_s / 60)
