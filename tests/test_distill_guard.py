"""A distillation run that makes the draft worse does not overwrite the previous draft.gguf unless asked."""

from __future__ import annotations

import pytest

from distill.evaluate import DraftFigures
from distill.report import _keep_or_replace


def figures(name: str, path, acceptance: float) -> DraftFigures:
    return DraftFigures(draft=name, path=str(path), weights="q4_1", size_mb=1.0, acceptance=acceptance,
                        mean_accepted_length=1.0, tokens_per_round=2.0, draft_tokens_per_s=10.0,
                        predicted_speedup=1.0, best_draft_tokens=1)


@pytest.mark.parametrize("new, overwrite, kept_previous", [(0.5, False, True), (0.5, True, False), (0.9, False, False)])
def test_a_worse_draft_leaves_the_previous_one(tmp_path, new, overwrite, kept_previous):
    (tmp_path / "draft.gguf").write_bytes(b"previous")
    (tmp_path / "draft.new.gguf").write_bytes(b"new")
    by_name = {"previous": figures("previous", tmp_path / "draft.gguf", 0.8),
               "untrained": figures("untrained", tmp_path / "u.gguf", 0.7),
               "distilled": figures("distilled", tmp_path / "draft.new.gguf", new)}
    verdict = _keep_or_replace(by_name, tmp_path / "draft.gguf", tmp_path, overwrite, print)
    assert verdict["kept_previous"] is kept_previous
    assert (tmp_path / "draft.gguf").read_bytes() == (b"previous" if kept_previous else b"new")
    assert (tmp_path / "draft-worse.gguf").exists() is kept_previous
    assert not (tmp_path / "draft.new.gguf").exists()
    assert verdict["worse_than"] == ("previous" if new < 0.8 else None)


def test_a_first_run_worse_than_the_untrained_student_says_so(tmp_path, capsys):
    (tmp_path / "draft.gguf").write_bytes(b"new")
    by_name = {"untrained": figures("untrained", tmp_path / "u.gguf", 0.7),
               "distilled": figures("distilled", tmp_path / "draft.gguf", 0.6)}
    verdict = _keep_or_replace(by_name, None, tmp_path, False, print)
    assert verdict["worse_than"] == "untrained" and "accepts less than the untrained student" in capsys.readouterr().out


def test_uld_loss_compares_sorted_distributions_across_vocabulary_sizes():
    import torch

    from distill.cross import uld_loss

    teacher = torch.tensor([[3.0, 1.0, 0.0, -1.0, -2.0]])
    permuted_and_padded = torch.tensor([[-2.0, 0.0, 3.0, -1.0, 1.0, -1e9, -1e9]])  # same probabilities, other ids
    assert float(uld_loss(permuted_and_padded, teacher)) == pytest.approx(0.0, abs=1e-6)
    flat = torch.zeros(1, 3)
    loss = uld_loss(flat.requires_grad_(), teacher)
    p = torch.softmax(teacher, -1).sort(descending=True).values[0]
    assert float(loss.detach()) == pytest.approx(float((p[:3] - 1 / 3).abs().sum() + p[3:].sum()), rel=1e-5)
    loss.backward()
