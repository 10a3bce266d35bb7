"""Distillation across tokenizers: a student that does not write the target's token ids.

A draft of another vocabulary drafts for the target at the string level (edge/cross_vocab.py:
the draft writes text, the target's tokenizer turns it into target ids, the target verifies).
What it must learn is therefore the target's *text*. Token-level divergences need a shared
vocabulary, so across tokenizers the student learns:

- sequence-level knowledge distillation (Kim & Rush, "Sequence-Level Knowledge Distillation",
  EMNLP 2016, arXiv 1606.07947): the target writes a continuation of each prompt (greedy by
  default: greedy hybrid decoding accepts exactly the target's greedy text), the text is
  re-tokenized by the student the way the edge re-tokenizes it (the prompt's text with the
  student's own BOS rules, then the answer tokenized after the prompt's last characters; see
  CrossVocabDrafter._begin and _draft_answer_ids), and the student is fitted to those tokens by
  cross-entropy on the answer's positions only (the prompt is the user's, not the target's);
- optionally (`--uld-weight W`), the Universal Logit Distillation loss (Boizard et al., "Towards
  Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs", 2024, arXiv
  2402.12030): the L1 distance between the target's and the student's *sorted* next-token
  probabilities (a closed-form Wasserstein distance that needs no vocabulary mapping), at the
  answer's i-th target token and the student's i-th answer token, over the shorter of the two.

Answers the target already gave (kept by the edge with --keep-answers, `--data`) are used as its
continuations directly. On-policy rows (student text scored by the target) need token-level
scores and are not used across tokenizers.
"""

from __future__ import annotations

import torch

from common.vocab_map import complete_utf8_length
from distill.models import generate, right_padded
from distill.train import Trainer
from edge.cross_vocab import PROMPT_TAIL_CHARS


def answer_text(teacher, ids: list[int]) -> tuple[str, bool]:
    """(the text of a target answer, whether it ended with an end-of-turn token); a trailing
    incomplete UTF-8 character is left out (its last bytes were not written yet)."""
    ends = set(teacher.eos_token_ids)
    ended = bool(ids) and ids[-1] in ends
    data = b"".join(teacher.token_bytes(t) for t in ids if t not in ends)
    return data[:complete_utf8_length(data)].decode("utf-8", errors="replace"), ended


def student_answer_ids(student, prompt_text: str, text: str) -> list[int]:
    """The student's ids for an answer, as the edge's CrossVocabDrafter tokenizes it: after the
    prompt's last PROMPT_TAIL_CHARS characters, so a tokenizer that marks the start of a text
    treats it as the continuation it is."""
    if not text:
        return []
    tail = prompt_text[-PROMPT_TAIL_CHARS:]
    before = student.tokenize(tail) if tail else []
    ids = student.tokenize(tail + text)
    return ids[len(before):] if ids[: len(before)] == before else student.tokenize(text)


def uld_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Universal Logit Distillation (arXiv 2402.12030, eq. 4): per position, the L1 distance between
    the sorted probability vectors (the shorter vocabulary padded with zeros). [n, V_s], [n, V_t] -> [n]."""
    p = torch.softmax(teacher_logits.float(), dim=-1).sort(dim=-1, descending=True).values
    q = torch.softmax(student_logits.float(), dim=-1).sort(dim=-1, descending=True).values
    width = min(p.shape[-1], q.shape[-1])
    # Past `width` only one side has mass; its sum is the L1 distance there.
    return (p[:, :width] - q[:, :width]).abs().sum(-1) + p[:, width:].sum(-1) + q[:, width:].sum(-1)


class CrossVocabTrainer(Trainer):
    """Trainer (distill/train.py) with string-level targets: same data plan, checkpoints, resume
    and data parallelism; each row is the target's answer text in the student's tokens."""

    def __init__(self, teacher, student, prompts: list[list[int]], prompt_texts: list[str],
                 student_prompts: list[list[int]], config, out_dir, recipe: dict, place,
                 answers: list[list[int] | None] | None = None, uld_weight: float = 0.0):
        """student: a TargetModel (distill.models.load_student); prompts: the teacher's ids of each
        prompt; prompt_texts, student_prompts: the same prompts as the student reads them (text, ids)."""
        super().__init__(teacher, student.model, prompts, config, out_dir, recipe, place, answers=answers)
        self.student_text = student.text
        self.prompt_texts = prompt_texts
        self.student_prompts = student_prompts
        self.student_ends = student.eos_token_ids
        self.uld_weight = uld_weight
        self._greedy: dict[int, list[int]] = {}  # greedy answers do not change: generated once per prompt

    def answers_of(self, step: int) -> list[tuple[int, list[int]]]:
        """(prompt index, the target's answer ids) for this process's rows of the step."""
        mine = self.batch_plan(step)[self.place.rank::self.place.world]
        known = {i: self.answers[p] if self.answers[p] is not None else self._greedy.get(p)
                 for i, (p, _, _) in enumerate(mine)}
        todo = [i for i, ids in known.items() if ids is None]
        if todo:
            self.teacher.model.eval()
            new = generate(self.teacher.model, [self.prompts[mine[i][0]] for i in todo], self.config.new_tokens,
                           self.config.temperature, [mine[i][2] for i in todo], self.stop_ids)
            for i, ids in zip(todo, new):
                known[i] = ids
                if self.config.temperature <= 0:
                    self._greedy[mine[i][0]] = ids
        return [(p, known[i]) for i, (p, _, _) in enumerate(mine)]

    def train_step(self, step: int) -> float:
        rows, starts, teacher_rows = [], [], []
        for p, ids in self.answers_of(step):
            text, ended = answer_text(self.teacher, ids)
            answer = student_answer_ids(self.student_text, self.prompt_texts[p], text)
            if ended and self.student_ends:
                answer.append(self.student_ends[0])
            rows.append(self.student_prompts[p] + answer)
            starts.append(len(self.student_prompts[p]))
            teacher_rows.append((list(self.prompts[p]) + list(ids), len(self.prompts[p])))
        ids, mask = right_padded(rows, self.teacher.device)
        labels = ids[:, 1:]
        position = torch.arange(labels.shape[1], device=ids.device)[None, :] + 1
        trained = mask[:, 1:].bool() & (position >= torch.tensor(starts, device=ids.device)[:, None])
        self.model.train()
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        per_position = torch.nn.functional.cross_entropy(logits[trained].float(), labels[trained], reduction="none")
        if self.uld_weight > 0:
            per_position = per_position + self.uld_weight * self._uld(logits, trained, teacher_rows)
        return self.fit(per_position, step)

    def _uld(self, logits: torch.Tensor, trained: torch.Tensor, teacher_rows) -> torch.Tensor:
        """ULD at each trained student position, against the target's distribution at the same
        answer index (the i-th student answer token with the i-th target answer token; past the
        target's answer, its last position)."""
        ids, mask = right_padded([seq for seq, _ in teacher_rows], self.teacher.device)
        with torch.no_grad():
            teacher_logits = self.teacher.model(input_ids=ids, attention_mask=mask).logits
        picked = []
        for row, (seq, start) in enumerate(teacher_rows):
            count = int(trained[row].sum())
            last = max(len(seq) - 2, start - 1)
            index = torch.clamp(torch.arange(count, device=ids.device) + start - 1, max=last)
            picked.append(teacher_logits[row, index])
        return uld_loss(logits[trained], torch.cat(picked))
