"""`tandem distill`: a fast draft for any target, by distillation, shipped as a quantized GGUF.

    tandem distill --target MODEL --out DIR [--layers N | --student DIR] [--max-minutes 60]

Writes DIR/draft.gguf (ready for --draft-model), DIR/student/ (the HF model), DIR/report.json
(held-out figures before and after training) and, while training, DIR/checkpoint.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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
                              "included), sharing its embeddings, LM head and tokenizer (default: a fifth of them, "
                              "rounded: 6 of the default target's 30)")
    student.add_argument("--student", default=None, metavar="DIR",
                         help="student = this HF Llama model; its tokenizer must be the target's")
    settings.add_arguments(parser, TrainConfig)
    settings.add_arguments(parser, RunConfig)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from common.extras import require_extra
    from distill.prompts import read_prompts, split_heldout

    for extra in ("cloud", "edge"):  # it trains with the target's stack and exports for the draft's
        require_extra(extra, "tandem distill")

    config = _train_config(args)
    quants = _quants(args.quant)
    prompts, heldout = split_heldout(read_prompts(args.prompts), args.heldout, args.seed)
    out = _check_out(Path(args.out), args.resume)
    return _distill(args, config, quants, prompts, heldout, out)


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


def _distill(args, config: TrainConfig, quants: list[str], prompts: list[str], heldout: list[str], out: Path) -> int:
    import torch
    import torch.distributed as dist

    from cloud.model import resolve_device
    from distill.models import encode_prompts, load_student, load_teacher, pruned_student
    from distill.train import Trainer, distributed_device, init_distributed

    device = distributed_device(resolve_device(args.device))
    place = init_distributed(device)
    say = _printer(place.main)
    load_start = os.getloadavg()
    torch.manual_seed(args.seed)
    teacher = load_teacher(args.target, str(device), args.threads)
    if args.student:
        student, kept = load_student(args.student, teacher), None
    else:
        total = teacher.model.config.num_hidden_layers
        student, kept = pruned_student(teacher, args.layers if args.layers is not None else max(1, round(total / 5)))
        say(f"tandem distill: student = {teacher.name} with decoder layers {kept} of 0-{total - 1}")
    chat = args.chat and bool(teacher.chat_template)
    train_ids = encode_prompts(teacher, prompts, chat)
    if place.main:
        _make_out(out)
    if place.world > 1:
        dist.barrier()
    recipe = {"target": teacher.name, "student": args.student and str(Path(args.student).resolve()),
              "layers": kept, "prompts": prompts, "chat": chat}
    # A pruned student keeps the target's embeddings and LM head frozen: they are the target's token
    # space, which the draft must share; training only its decoder layers also saves memory and time.
    trainable = (lambda name: "embed_tokens" not in name and "lm_head" not in name) if kept else (lambda name: True)
    trainer = Trainer(teacher, student, train_ids, config, out, recipe, place, trainable)
    if args.resume:
        trainer.resume()
    say(f"tandem distill: {len(prompts)} training prompts, {len(heldout)} held out; {config.divergence}, "
        f"on-policy share {config.on_policy}; {sum(p.numel() for p in trainer.parameters.values()) / 1e6:.1f}M "
        f"trainable parameters; {place.world} process(es) on {device}, {torch.get_num_threads()} torch threads; "
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
    from distill.evaluate import as_dicts, evaluate_drafts, reference_continuations, table
    from distill.export import export_gguf
    from distill.models import save_student

    student_dir = save_student(student, teacher, out / "student")
    drafts = {}
    for i, quant in enumerate(quants):
        path = export_gguf(student_dir, out / ("draft.gguf" if i == 0 else f"draft-{quant}.gguf"), quant)
        drafts["distilled" if i == 0 else f"distilled-{quant}"] = (path, quant)
    say(f"tandem distill: wrote {student_dir} and {', '.join(str(p) for p, _ in drafts.values())}")
    with tempfile.TemporaryDirectory(prefix="untrained-", dir=out) as scratch:
        untrained = (pruned_student(teacher, len(kept))[0] if kept else load_student(args.student, teacher))
        untrained_dir = save_student(untrained, teacher, Path(scratch) / "student")
        del untrained
        before = {"untrained": (export_gguf(untrained_dir, Path(scratch) / "draft.gguf", quants[0]), quants[0])}
        references = _default_draft(teacher)
        held_ids = encode_prompts(teacher, heldout, chat)
        continuations = reference_continuations(teacher, held_ids, args.eval_tokens)
        figures, target_s = evaluate_drafts({**before, **drafts, **references}, teacher, held_ids, continuations,
                                            args.draft_tokens, say)
    by_name = {f.draft: f for f in figures}
    report = {
        "command": "tandem " + " ".join(sys.argv[1:]),
        "target": teacher.name, "student": {"layers_kept": kept, "from": args.student},
        "settings": {k: v for k, v in vars(args).items() if not callable(v)},  # the flags, not the dispatch hooks
        "training": training, "heldout_prompts": heldout, "draft_tokens": args.draft_tokens,
        "eval_tokens": args.eval_tokens, "target_ms_per_token_one_thread": round(target_s * 1e3, 2),
        "drafts": as_dicts(figures),
        "ratios": _ratios(by_name),
        "load_average_end": os.getloadavg(),
    }
    partial = out / "report.json.partial"
    partial.write_text(json.dumps(report, indent=1, default=str))
    os.replace(partial, out / "report.json")
    print(table(figures, args.draft_tokens))
    for name, value in report["ratios"].items():
        print(f"{name}: {value if value is None else f'{value:.2f}'}")
    print(f"\nwrote {out / 'report.json'}; use it with: tandem generate --draft-model {out / 'draft.gguf'} ...; "
          f"measure it with: tandem bench --draft-model {out / 'draft.gguf'}")
    return 0


def _default_draft(teacher) -> dict:
    """The project's default draft, as the reference row, when it tokenizes like the target."""
    from common.model_paths import default_gguf_path
    from edge.llama_drafter import tokenize_with_vocab
    from common.fingerprint import PROBE_TEXT

    try:
        path = default_gguf_path()
    except FileNotFoundError:
        return {}
    if not path.is_file() or tokenize_with_vocab(path, [PROBE_TEXT]) != [teacher.tokenize(PROBE_TEXT)]:
        return {}
    return {"default": (path, "q4_1")}


def _ratios(by_name: dict) -> dict:
    from distill.figures import ratio

    distilled, untrained, default = by_name.get("distilled"), by_name.get("untrained"), by_name.get("default")
    return {
        "mean_accepted_length_distilled_over_untrained":
            ratio(distilled.mean_accepted_length, untrained.mean_accepted_length),
        "draft_tokens_per_s_distilled_over_default":
            ratio(distilled.draft_tokens_per_s, default.draft_tokens_per_s) if default else None,
        "predicted_speedup_distilled_over_default":
            ratio(distilled.predicted_speedup, default.predicted_speedup) if default else None,
    }


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
