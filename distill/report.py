"""The end of a run: the untrained baseline, the export, the held-out report and the draft.gguf guard.

Every draft is judged as the edge will run it: the quantized GGUF in llama.cpp, and, when the
student's tokenizer is not the target's, wrapped in the edge's own cross-vocabulary drafter
(edge/cross_vocab.py: string-level exact match, the rule a mismatched pair drafts with), so each
acceptance figure counts the target ids the edge would really propose.

A run that makes the draft worse does not overwrite the previous DIR/draft.gguf (a resumed run's
earlier result) unless --overwrite-worse is given: the new one is kept as DIR/draft-worse.gguf.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common.errors import FailedPrecondition, InvalidArgument
from common.wire import ModelInfo
from distill.export import export_gguf
from distill.models import encode_prompts, save_student


def teacher_prompts(teacher, examples: list, chat: bool) -> tuple[list[list[int]], list[list[int] | None]]:
    """(the target's ids of each prompt, the target's answer ids where one was kept (else None)).

    A kept answer's own ids are used when they are the target's (same tokenizer fingerprint);
    otherwise its text is tokenized by the target."""
    ids, answers = [], []
    for prompt, kept in examples:
        if kept is None:
            ids.append(encode_prompts(teacher, [prompt], chat)[0])
            answers.append(None)
        elif kept.tokenizer == teacher.fingerprint and kept.prompt_ids and kept.answer_ids is not None:
            ids.append(list(kept.prompt_ids))
            answers.append(list(kept.answer_ids))
        else:
            ids.append(teacher.encode(kept.prompt))
            answers.append(teacher.tokenize(kept.answer))
    return ids, answers


def target_info(teacher) -> ModelInfo:
    """The target described as the cloud's Info describes it, for the edge's cross-vocabulary drafter."""
    return ModelInfo(model_name=teacher.name, vocab_size=teacher.vocab_size, tokenizer_fingerprint=teacher.fingerprint,
                     eos_token_ids=list(teacher.eos_token_ids), max_context=teacher.max_context,
                     chat_template=teacher.chat_template or "", special_tokens=teacher.special)


def draft_opener(teacher, cross: bool):
    """open(path, n_ctx) -> a draft engine speaking the target's ids, as the edge would make it."""
    from edge.cross_vocab import check_pair
    from edge.llama_drafter import LlamaDrafter

    info = target_info(teacher) if cross else None

    def open_draft(path: Path, n_ctx: int):
        drafter = LlamaDrafter(path, n_ctx=n_ctx, threads=1)
        if info is None:
            return drafter
        try:
            return check_pair(drafter, teacher.text, info)
        except BaseException:
            drafter.close()
            raise
    return open_draft


class Baseline:
    """The untrained student exported as the distilled one will be, in a scratch directory outside
    --out; check() proves the edge can run it before any training."""

    def __init__(self, model, tokenizer, quant: str, cross_teacher=None):
        self.model, self.tokenizer, self.quant = model, tokenizer, quant
        self.cross_teacher = cross_teacher
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.path: Path | None = None

    def check(self, say) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="tandem-distill-untrained-")
        scratch = Path(self._scratch.name)
        say("tandem distill: exporting the untrained student and loading it in llama.cpp")
        try:
            student_dir = save_student(self.model, self.tokenizer, scratch / "student")
            self.path = export_gguf(student_dir, scratch / "draft.gguf", self.quant)
            shutil.rmtree(student_dir)
        except (InvalidArgument, ValueError, RuntimeError, KeyError, OSError) as exc:  # the converter's reasons
            raise InvalidArgument(f"the student cannot be exported as a llama.cpp draft: {exc}") from None
        try:
            if self.cross_teacher is not None:
                draft_opener(self.cross_teacher, True)(self.path, 256).close()
            else:
                from edge.llama_drafter import LlamaDrafter

                LlamaDrafter(self.path, n_ctx=256, threads=1).close()
        except (ValueError, RuntimeError, FailedPrecondition) as exc:
            raise InvalidArgument(f"the student, exported as a GGUF, cannot run as a draft in llama.cpp: {exc}") from None

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()


def write_report(args, teacher, model, student, kept, quants: list[str], heldout: list, chat: bool, out: Path,
                 training: dict, baseline: Baseline, say) -> int:
    from distill.evaluate import as_dicts, evaluate_drafts, reference_continuations, table

    cross = baseline.cross_teacher is not None
    student_dir = save_student(model, student.tokenizer if student else teacher.tokenizer, out / "student")
    previous = out / "draft.gguf" if (out / "draft.gguf").is_file() else None
    drafts = {}
    for i, quant in enumerate(quants):
        name = ("draft.new.gguf" if previous else "draft.gguf") if i == 0 else f"draft-{quant}.gguf"
        drafts["distilled" if i == 0 else f"distilled-{quant}"] = (export_gguf(student_dir, out / name, quant), quant)
    say(f"tandem distill: wrote {student_dir} and {', '.join(str(p) for p, _ in drafts.values())}")
    before = {"untrained": (baseline.path, quants[0])}
    if previous:
        before["previous"] = (previous, "its own")
    held_ids, _ = teacher_prompts(teacher, heldout, chat)
    continuations = reference_continuations(teacher, held_ids, args.eval_tokens)
    figures, target_s = evaluate_drafts({**before, **drafts, **_default_draft(teacher, cross)}, teacher, held_ids,
                                        continuations, args.draft_tokens, say, draft_opener(teacher, cross))
    by_name = {f.draft: f for f in figures}
    verdict = _keep_or_replace(by_name, previous, out, args.overwrite_worse, say)
    report = {
        "command": "tandem " + " ".join(sys.argv[1:]),
        "target": teacher.name,
        "student": {"layers_kept": kept, "from": args.student, "name": student.name if student else None,
                    "cross_tokenizer": cross},
        "settings": {k: v for k, v in vars(args).items() if not callable(v)},  # the flags, not the dispatch hooks
        "training": training, "heldout_prompts": [p for p, _ in heldout], "draft_tokens": args.draft_tokens,
        "eval_tokens": args.eval_tokens, "target_ms_per_token_one_thread": round(target_s * 1e3, 2),
        "acceptance_rule": "string-level exact match through edge/cross_vocab.py" if cross else "token ids",
        "drafts": as_dicts(figures), "ratios": _ratios(by_name), "draft_gguf": verdict,
        "load_average_end": os.getloadavg(),
    }
    partial = out / "report.json.partial"
    partial.write_text(json.dumps(report, indent=1, default=str))
    os.replace(partial, out / "report.json")
    print(table(figures, args.draft_tokens))
    for name, value in report["ratios"].items():
        print(f"{name}: {value if value is None else f'{value:.2f}'}")
    target = f" --model {args.target}" if args.target else ""
    print(f"\nwrote {out / 'report.json'}; use it with: tandem generate{target} --draft-model {out / 'draft.gguf'} ...; "
          f"measure it with: tandem bench{target} --draft-model {out / 'draft.gguf'}")
    return 0


def _keep_or_replace(by_name: dict, previous: Path | None, out: Path, overwrite_worse: bool, say) -> dict:
    """Where the distilled draft went, and why: a draft that accepts less than the one it would
    replace (the previous draft.gguf, else the untrained student) is flagged, and does not
    overwrite a previous draft.gguf unless asked."""
    distilled = by_name["distilled"]
    against = by_name["previous" if previous else "untrained"]
    worse = distilled.acceptance < against.acceptance
    verdict = {"worse_than": against.draft if worse else None, "path": str(out / "draft.gguf")}
    if previous is None:
        if worse:
            say(f"tandem distill: warning: the distilled draft accepts less than the untrained student "
                f"({distilled.acceptance:.3f} vs {against.acceptance:.3f})")
        return verdict
    if worse and not overwrite_worse:
        os.replace(distilled.path, out / "draft-worse.gguf")
        distilled.path = str(out / "draft-worse.gguf")
        say(f"tandem distill: the new draft accepts less than the previous draft.gguf ({distilled.acceptance:.3f} vs "
            f"{against.acceptance:.3f}): kept the previous one, wrote the new one as draft-worse.gguf "
            "(--overwrite-worse replaces it)")
        verdict["path"] = distilled.path
        verdict["kept_previous"] = True
        return verdict
    os.replace(distilled.path, out / "draft.gguf")
    distilled.path = str(out / "draft.gguf")
    verdict["kept_previous"] = False
    return verdict


def _default_draft(teacher, cross: bool) -> dict:
    """The project's default draft, as the reference row, when it can draft for the target (same
    tokenizer, or any tokenizer when the student is drafting across vocabularies too)."""
    from common.fingerprint import PROBE_TEXT
    from common.model_paths import default_gguf_path
    from edge.llama_drafter import tokenize_with_vocab

    try:
        path = default_gguf_path()
    except FileNotFoundError:
        return {}
    if not path.is_file():
        return {}
    if not cross and tokenize_with_vocab(path, [PROBE_TEXT]) != [teacher.tokenize(PROBE_TEXT)]:
        return {}
    return {"default": (path, "q4_1")}


def _ratios(by_name: dict) -> dict:
    from distill.figures import ratio

    distilled, untrained, default = by_name.get("distilled"), by_name.get("untrained"), by_name.get("default")
    return {
        "acceptance_distilled_over_untrained": ratio(distilled.acceptance, untrained.acceptance),
        "mean_accepted_length_distilled_over_untrained":
            ratio(distilled.mean_accepted_length, untrained.mean_accepted_length),
        "predicted_speedup_distilled_over_untrained": ratio(distilled.predicted_speedup, untrained.predicted_speedup),
        "acceptance_distilled_over_default": ratio(distilled.acceptance, default.acceptance) if default else None,
        "draft_tokens_per_s_distilled_over_default":
            ratio(distilled.draft_tokens_per_s, default.draft_tokens_per_s) if default else None,
        "predicted_speedup_distilled_over_default":
            ratio(distilled.predicted_speedup, default.predicted_speedup) if default else None,
    }
