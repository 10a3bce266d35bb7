"""`tandem distill` with a student of another tokenizer: string-level distillation, judged by the edge's rule.

The pair is mismatched on purpose: the target a tiny SentencePiece bigram model that writes one
sentence after any prompt ending in ":" (tests/cross_vocab_models.py), the student a random tiny
byte-level BPE model (SmolLM2's tokenizer), which drafts nothing of it at first. The student
learns the target's greedy text re-tokenized (sequence-level KD); the report measures it through
edge/cross_vocab.py, the rule the edge drafts a mismatched pair with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bench.tiny_models import build_tiny_target, load_llama, smollm2_tokenizer_dir, tiny_sentencepiece_tokenizer_dir
from cross_vocab_models import build_bigram_model, chain_rows

from tandem.cli import main

PROMPTS = ["Story:", "Once upon a time:", "x:", "Tell me:", "A tale:", "Listen:", "Begin:", "Note:", "Then:",
           "Fable:"]
SENTENCE = " The quick brown fox jumps over a lazy dog."
STEPS = 30


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("cross-distill")
    spm_dir = tiny_sentencepiece_tokenizer_dir(root / "spm")
    spm = AutoTokenizer.from_pretrained(spm_dir)
    colon = spm("x:", add_special_tokens=False)["input_ids"][-1:]
    for text in PROMPTS:  # every prompt ends where the target's sentence begins
        assert spm(text, add_special_tokens=False)["input_ids"][-1:] == colon, text
    chain = colon + spm(SENTENCE, add_special_tokens=False)["input_ids"]
    target = build_bigram_model(root / "target", spm_dir, chain_rows(chain, spm.eos_token_id))
    student = build_tiny_target(root / "student", smollm2_tokenizer_dir(root), seed=4)
    return target, student


@pytest.fixture(scope="module")
def distilled(pair, tmp_path_factory) -> Path:
    target, student = pair
    root = tmp_path_factory.mktemp("cross-run")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = root / "run"
    assert main(["distill", "--target", str(target), "--student", str(student), "--out", str(out), "--prompts",
                 str(prompts), "--heldout", "2", "--batch-size", "4", "--new-tokens", "12", "--eval-tokens", "12",
                 "--draft-tokens", "4", "--threads", "1", "--lr", "3e-3", "--warmup-steps", "2", "--temperature", "0",
                 "--no-chat",
                 "--max-steps", str(STEPS), "--max-minutes", "0", "--quant", "f32"]) == 0
    return out


def test_string_level_loss_decreases_and_the_report_uses_the_edges_rule(distilled):
    report = json.loads((distilled / "report.json").read_text())
    losses = [loss for _, loss in report["training"]["losses"]]
    assert len(losses) == STEPS
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert report["student"]["cross_tokenizer"] and report["acceptance_rule"].startswith("string-level")
    assert report["settings"]["on_policy"] == 0.5  # asked for, but across tokenizers only the target's text is learned
    drafts = {d["draft"]: d for d in report["drafts"]}
    for figures in drafts.values():
        assert 0 <= figures["acceptance"] <= 1 and 0 <= figures["mean_accepted_length"] <= report["draft_tokens"]
    # The target's greedy text, learned: the edge's string-level drafter now proposes its tokens.
    assert drafts["distilled"]["acceptance"] > drafts["untrained"]["acceptance"], drafts
    assert report["draft_gguf"]["worse_than"] is None


def test_exported_gguf_greedy_equals_the_students_greedy_in_transformers(distilled):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(distilled / "student", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(distilled / "student")
    llm = load_llama(distilled / "draft.gguf")
    try:
        for text in PROMPTS[:4]:
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            expected = []
            with torch.inference_mode():
                for _ in range(16):
                    expected.append(int(student(torch.tensor([prompt + expected])).logits[0, -1].argmax()))
            llm.reset()
            llm.eval(prompt)
            got = []
            for _ in range(16):
                got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval([got[-1]])
            assert got == expected, text
    finally:
        llm.close()


def test_kept_answers_alone_train_the_draft(pair, tmp_path):
    """--data: the target's answers, as the edge keeps them (common/answer_log.py), are the training
    text; nothing is generated for them, and held-out acceptance on prompts of the same kind rises."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.answer_log import AnswerLog

    target, student = pair
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(target)
    log = AnswerLog(tmp_path / "kept", 1 << 20)
    for text in PROMPTS:
        prompt = tokenizer(text)["input_ids"]
        with torch.inference_mode():
            ids = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
        # Text only (no tokenizer fingerprint): distill re-tokenizes it with the target's tokenizer.
        log.record(model="t", tokenizer="", mode="hybrid", prompt=text, prompt_ids=[],
                   answer=tokenizer.decode(ids, skip_special_tokens=True), answer_ids=[], finish="length")
    out = tmp_path / "run"
    assert main(["distill", "--target", str(target), "--student", str(student), "--out", str(out), "--data",
                 str(tmp_path / "kept"), "--heldout", "2", "--batch-size", "4", "--eval-tokens", "12",
                 "--draft-tokens", "4", "--threads", "1", "--lr", "3e-3", "--warmup-steps", "2",
                 "--max-steps", str(STEPS), "--max-minutes", "0", "--quant", "f32"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["heldout_prompts"]) <= set(PROMPTS)
    drafts = {d["draft"]: d for d in report["drafts"]}
    assert drafts["distilled"]["acceptance"] > drafts["untrained"]["acceptance"], drafts
