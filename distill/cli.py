"""`tandem distill`: a fast draft for any target, by distillation, shipped as a quantized GGUF.

    tandem distill --target MODEL --out DIR [--layers N | --student PATH] [--data DIR] [--max-minutes 60]

Writes DIR/draft.gguf (ready for --draft-model), DIR/student/ (the HF model), DIR/report.json
(held-out figures before and after training) and, while training, DIR/checkpoint.pt.

The student is by default the default draft's checkpoint (SmolLM2-135M-Instruct), which may not
share the target's tokenizer: training is then string-level (distill/cross.py) and the report
judges the draft through the edge's own cross-vocabulary drafter (edge/cross_vocab.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from common import settings
from common.errors import InvalidArgument
from distill.config import WEIGHT_TYPES, RunConfig, TrainConfig


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="make a fast draft model for a target by distillation (ends in a quantized GGUF)",
        description="Distill a small student from the target on text generated on the fly (the target's own "
                    "continuations and a share of the student's, scored by the target), then export it as a "
                    "quantized GGUF for --draft-model and report held-out acceptance and speed before and after "
                    "training. Runs data-parallel when started by torchrun (or accelerate launch).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # The models are plain argparse: --out is required and --layers/--student exclude each other,
    # which settings (declared once, below) do not express.
    g = parser.add_argument_group("models")
    g.add_argument("--target", default=None, metavar="MODEL",
                   help="target model: HF directory or GGUF (default: SmolLM2-135M-Instruct, the default target)")
    g.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty, or one to --resume)")
    student = g.add_mutually_exclusive_group()
    student.add_argument("--layers", type=int, default=None, metavar="N",
                         help="student = the target with N decoder layers kept (evenly spaced, first and last "
                              "included), sharing its embeddings, LM head and tokenizer")
    student.add_argument("--student", default=None, metavar="PATH",
                         help="student = this Llama model (HF directory or GGUF); its tokenizer may differ from "
                              "the target's (then it learns the target's text, re-tokenized). Default, without "
                              "--layers: the default draft's checkpoint, SmolLM2-135M-Instruct")
    settings.add_arguments(parser, TrainConfig)
    settings.add_arguments(parser, RunConfig)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from common.extras import require_extra
    from distill.prompts import split_heldout

    for extra in ("cloud", "edge"):  # it trains with the target's stack and exports for the draft's
        require_extra(extra, "tandem distill")

    config = _train_config(args)
    quants = _quants(args.quant)
    train, heldout = split_heldout(_examples(args), args.heldout, args.seed)
    out = _check_out(Path(args.out), args.resume)
    return _distill(args, config, quants, train, heldout, out)


def _examples(args) -> list:
    """(prompt, KeptAnswer or None) pairs: kept answers (--data), prompts to generate from (--prompts or
    the shipped ones), or both mixed when both are given."""
    from common.answer_log import read_answers
    from distill.prompts import read_prompts

    kept = [(a.prompt, a) for a in read_answers(args.data)] if args.data else []
    generated = [(p, None) for p in read_prompts(args.prompts, args.chat)] if args.prompts or not args.data else []
    return kept + generated


def _train_config(args) -> TrainConfig:
    config = settings.from_args(TrainConfig, args)
    settings.check_ranges(config)
    settings.check_ranges(settings.from_args(RunConfig, args))
    return config


def _quants(spec: str) -> list[str]:
    quants = [q.strip().lower() for q in spec.split(",") if q.strip()]
    if not quants or set(quants) - set(WEIGHT_TYPES):
        raise InvalidArgument(f"--quant takes {', '.join(WEIGHT_TYPES)} (comma-separated), got {spec!r}")
    return list(dict.fromkeys(quants))


def _check_out(out: Path, resume: bool) -> Path:
    """Refuses an --out that cannot be written or holds something else, before anything is written."""
    if out.exists() and not out.is_dir():
        raise InvalidArgument(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise InvalidArgument(f"--out {out} is not empty; choose a new directory, or pass --resume to continue "
                              "the run in it")
    if resume and not (out / "checkpoint.pt").is_file():
        raise InvalidArgument(f"--resume: {out} has no checkpoint.pt to resume from")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidArgument(f"--out {out} cannot be written ({existing} is not a writable directory)")
    return out


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InvalidArgument(f"--out {out} cannot be written: {exc.strerror or exc}") from None


def _distill(args, config: TrainConfig, quants: list[str], train: list, heldout: list, out: Path) -> int:
    import torch
    import torch.distributed as dist

    from cloud.model import resolve_device
    from distill.models import load_student, load_teacher, pruned_student, same_tokenizer
    from distill.report import Baseline, teacher_prompts
    from distill.train import Trainer, distributed_device, init_distributed

    device = distributed_device(resolve_device(args.device))
    place = init_distributed(device)
    say = _printer(place.main)
    load_start = os.getloadavg()
    torch.manual_seed(args.seed)
    teacher = load_teacher(args.target, str(device), args.threads)
    if args.layers is not None:
        total = teacher.model.config.num_hidden_layers
        model, kept = pruned_student(teacher, args.layers)
        student, cross = None, False
        say(f"tandem distill: student = {teacher.name} with decoder layers {kept} of 0-{total - 1}")
    else:
        student, kept = load_student(args.student, teacher), None
        model, cross = student.model, not same_tokenizer(student, teacher)
        say(f"tandem distill: student = {student.name}"
            + (" (another tokenizer than the target's: string-level distillation)" if cross else ""))
    if cross and config.on_policy:
        say("tandem distill: across tokenizers only the target's own text is learned (--on-policy 0)")
        config = dataclasses.replace(config, on_policy=0.0)
    chat = args.chat and bool(teacher.chat_template)
    if chat and not teacher.text.has_own_chat_template and any(answer is None for _, answer in train):
        say(f"tandem distill: warning: {teacher.name} has no chat template of its own (a pretrained model?); "
            "a base model answers a chat-rendered prompt with junk: pass --no-chat to learn its raw continuations")
    train_ids, train_answers = teacher_prompts(teacher, train, chat)
    # Before anything is written to --out: the untrained student must export and run in llama.cpp
    # as the edge runs it (a draft the edge cannot load is refused now, not after an hour).
    baseline = (Baseline(model, student.tokenizer if student else teacher.tokenizer, quants[0],
                         teacher if cross else None) if place.main and args.export else None)
    try:
        if baseline is not None:
            baseline.check(say)
        if place.main:
            _make_out(out)
        if place.world > 1:
            dist.barrier()
        recipe = {"target": teacher.name, "student": args.student and str(Path(args.student).resolve()),
                  "layers": kept, "prompts": [p for p, _ in train], "chat": chat, "cross_tokenizer": cross}
        if cross:
            from distill.cross import CrossVocabTrainer

            texts, student_ids = _student_prompts(student, train, chat)
            trainer = CrossVocabTrainer(teacher, student, train_ids, texts, student_ids, config, out, recipe, place,
                                        train_answers, config.uld_weight)
        else:
            # A pruned student keeps the target's embeddings and LM head frozen: they are the target's
            # token space, which the draft must share; training only its decoder layers also saves
            # memory and time.
            trainable = ((lambda name: "embed_tokens" not in name and "lm_head" not in name) if kept
                         else (lambda name: True))
            trainer = Trainer(teacher, model, train_ids, config, out, recipe, place, trainable, train_answers)
        if args.resume:
            trainer.resume()
        say(f"tandem distill: {len(train)} training examples ({sum(a is not None for a in train_answers)} kept "
            f"answers), {len(heldout)} held out; "
            f"{'sequence-level KD' + (f' + ULD x{config.uld_weight:g}' if config.uld_weight else '') if cross else config.divergence}, "
            f"on-policy share {config.on_policy}; "
            f"{sum(p.numel() for p in trainer.parameters.values()) / 1e6:.1f}M trainable parameters; "
            f"{place.world} process(es) on {device}, {torch.get_num_threads()} torch threads; "
            f"budget {config.max_minutes:g} min; load average {load_start[0]:.2f}")
        state = trainer.run(_progress_bar(config, place.main))
        load_trained = os.getloadavg()
        if place.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        if not place.main:
            return 0
        losses = [loss for _, loss in state.losses]
        training = {"steps": state.step, "minutes": round(state.elapsed_s / 60, 2), "positions": state.positions,
                    "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                    "resumed_from": state.resumed_from, "processes": place.world, "device": str(device),
                    "torch_threads": torch.get_num_threads(), "load_average_start": load_start,
                    "load_average_end": load_trained, "losses": state.losses}
        say(f"tandem distill: trained {state.step} steps in {state.elapsed_s / 60:.1f} min "
            f"(loss {training['first_loss']} -> {training['last_loss']})")
        if not args.export:
            return 0
        from distill.report import write_report

        return write_report(args, teacher, model, student, kept, quants, heldout, chat, out, training, baseline,
                            say)
    finally:
        if baseline is not None:
            baseline.close()


def _student_prompts(student, examples: list, chat: bool) -> tuple[list[str], list[list[int]]]:
    """(text, ids) of each prompt as a draft of the student's tokenizer reads it on the edge
    (edge/cross_vocab.py): a chat rendered with the student's own template, other prompts (and kept
    answers' prompts, already rendered for the target) as text with the student's BOS rules."""
    from edge.chat_template import render_chat

    texts, ids = [], []
    for prompt, kept in examples:
        if chat and kept is None and student.chat_template:
            rules = student.special
            text = render_chat(student.chat_template, [{"role": "user", "content": prompt}],
                               bos_token=rules.bos_token, eos_token=rules.eos_token)
            texts.append(text)
            ids.append(student.text.encode_rendered_chat(text))
        else:
            texts.append(prompt)
            ids.append(student.text.encode(prompt))
    return texts, ids


def _printer(main: bool):
    def say(message: str) -> None:
        if main:
            print(message, file=sys.stderr, flush=True)
    return say


def _progress_bar(config: TrainConfig, main: bool):
    """A tqdm bar with the loss and training speed (process 0 only)."""
    if not main:
        return None
    from tqdm import tqdm

    bar = tqdm(total=config.max_steps or None, unit="step", desc="distill", file=sys.stderr, dynamic_ncols=True)

    def update(state, loss: float, step_s: float, step_positions: int) -> None:
        if bar.n == 0 and state.step > 1:
            bar.update(state.step - 1)  # resumed
        bar.update(1)
        rate = step_positions / max(step_s, 1e-9)
        budget = f"/{config.max_minutes:g}" if config.max_minutes else ""
        bar.set_postfix_str(f"loss {loss:.4f}, {rate:.0f} tok/s, {state.elapsed_s / 60:.1f}{budget} min")
    return update
