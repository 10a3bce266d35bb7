"""cloud/greedy_head.py: the bf16 screen gives the float32 argmax, near-ties included.

Pure tensors, no model, except the last tests, which load the tiny target with the screen forced on.
"""

from __future__ import annotations

import pytest
import torch

from cloud import greedy_head
from cloud.greedy_head import ScreenedHead


def _head(vocab: int, hidden: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, hidden, generator=generator)
    return weight * torch.rand(vocab, 1, generator=generator).mul(3).add(0.1)  # rows of varied norms


def _hidden(rows: int, hidden: int, seed: int, scale: float = 30.0) -> torch.Tensor:
    return torch.randn(rows, hidden, generator=torch.Generator().manual_seed(seed)) * scale


def test_the_screen_gives_the_float32_argmax():
    weight = _head(20_000, 96, seed=0)
    hidden = _hidden(80, 96, seed=1)  # more rows than one screen takes
    assert hidden.shape[0] > greedy_head.ROWS_PER_SCREEN
    full = torch.nn.functional.linear(hidden, weight).argmax(dim=-1).tolist()
    assert ScreenedHead(weight).argmax(hidden) == full


def test_the_slack_bounds_the_distance_between_screen_and_float32():
    """The bound the whole method stands on, checked directly on every logit."""
    weight, hidden = _head(5_000, 256, seed=2), _hidden(16, 256, seed=3)
    head = ScreenedHead(weight)
    screen = torch.nn.functional.linear(hidden.bfloat16(), head.screen).float()
    exact = torch.nn.functional.linear(hidden.double(), weight.double())
    slack = (greedy_head.MARGIN * greedy_head.BF16_UNIT * screen.abs() + greedy_head.ABSOLUTE
             + head.per_norm * hidden.norm(dim=1, keepdim=True) * head.norms[None, :])
    distance = (screen.double() - exact).abs()
    assert (distance <= slack.double()).all()
    assert distance.max() > 0  # the screen does round: the check compares something


def test_near_ties_that_bf16_alone_gets_wrong_come_out_right():
    """Rows whose logits differ by less than bf16 can tell apart, and a lone bf16 argmax picks wrong."""
    hidden = _hidden(4, 64, seed=4, scale=1.0)
    generator = torch.Generator().manual_seed(5)
    base = torch.randn(64, generator=generator)
    scales = 1 + torch.randperm(40, generator=generator).double() * 2e-5  # gaps of 2e-5: far below bf16's 2^-8
    weight = torch.cat([(base[None, :].double() * scales[:, None]).float(), _head(3_000, 64, seed=6) * 0.01])
    hidden[:] = base * 10
    exact = torch.nn.functional.linear(hidden.double(), weight.double()).argmax(dim=-1).tolist()
    bf16_alone = torch.nn.functional.linear(hidden.bfloat16(), weight.bfloat16()).float().argmax(dim=-1).tolist()
    assert bf16_alone != exact, "the case must be one the screen alone cannot decide"
    assert ScreenedHead(weight).argmax(hidden) == exact == [int(scales.argmax())] * 4


def test_tied_logits_give_the_lowest_id():
    weight = _head(1_000, 32, seed=7)
    weight[700] = weight[300]
    weight[900] = weight[300]
    hidden = weight[300:301] * 5  # row 300 (and its copies) has the largest logit
    assert torch.nn.functional.linear(hidden, weight).argmax(dim=-1).tolist() == [300]
    assert ScreenedHead(weight).argmax(hidden) == [300]


def test_non_finite_rows_take_the_plain_argmax():
    weight = _head(500, 16, seed=8)
    hidden = _hidden(3, 16, seed=9)
    hidden[1, 4] = float("inf")
    expected = torch.nn.functional.linear(hidden, weight).argmax(dim=-1).tolist()
    assert ScreenedHead(weight).argmax(hidden) == expected
    assert ScreenedHead(weight).argmax(hidden[:0]) == []


def test_only_float32_heads_are_screened():
    with pytest.raises(ValueError, match="float32"):
        ScreenedHead(torch.zeros(10, 4, dtype=torch.float64))


def test_the_tiny_target_screened_gives_the_same_ids_and_logits(tiny_models):
    """Through the model: forward_batch's greedy ids and full rows with the screen equal those without."""
    from cloud.blocks import BLOCK_SIZE
    from cloud.model import LoadOptions, TargetModel
    from cloud.target_engine import Segment

    results = {}
    for choice in ("full", "screened"):
        target = TargetModel.load(str(tiny_models.target_dir), LoadOptions(device="cpu", threads=1, greedy_head=choice))
        assert (target.screened_head is not None) == (choice == "screened")
        ids = target.tokenize("The quick brown fox jumps over the lazy dog. " * 4)
        pool = target.new_kv_pool(4 * (len(ids) + 2 * BLOCK_SIZE) * target.kv_bytes_per_token)
        table = pool.new_table()
        logits = target.forward_batch(pool, [Segment(table, ids, len(ids))])[0]
        results[choice] = (logits.argmax(), logits.numpy().copy())
        table.release()
    (full_ids, full_rows), (screened_ids, screened_rows) = results["full"], results["screened"]
    assert screened_ids == full_ids == full_rows.argmax(axis=-1).tolist()
    assert (abs(screened_rows - full_rows) <= 1e-5 * abs(full_rows).max()).all()


def test_auto_leaves_a_small_head_alone(tiny_target):
    assert tiny_target.screened_head is None  # the tiny head is far below WORTH_SCREENING
    assert tiny_target.model.get_output_embeddings().weight.numel() < greedy_head.WORTH_SCREENING
    with pytest.raises(ValueError, match="greedy head"):
        tiny_target.use_screened_head("fast")


def test_a_kept_row_stays_a_hidden_state_until_its_logits_are_asked_for(tiny_models):
    """A prefix-cache snapshot of a screened pass keeps the hidden row (no 262k-wide logits at
    prefill on Gemma), and gives what the pass gave; a plain pass's row is copied to the host."""
    from cloud.blocks import BLOCK_SIZE
    from cloud.model import LoadOptions, ScreenedLogits, TargetModel
    from cloud.target_engine import HostLogits, Segment, kept_first_row

    for choice, kept_type in (("screened", ScreenedLogits), ("full", HostLogits)):
        target = TargetModel.load(str(tiny_models.target_dir), LoadOptions(device="cpu", threads=1, greedy_head=choice))
        ids = target.tokenize("A kept row of logits")
        pool = target.new_kv_pool(4 * (len(ids) + 2 * BLOCK_SIZE) * target.kv_bytes_per_token)
        table = pool.new_table()
        logits = target.forward_batch(pool, [Segment(table, ids, 1)])[0]  # a prefill's end: one row
        kept = kept_first_row(logits)
        assert isinstance(kept, kept_type)
        if choice == "screened":
            assert kept._rows is None  # nothing computed yet
        assert kept.argmax() == logits.argmax()[:1]
        assert (kept.numpy() == logits.numpy()[:1]).all()
        table.release()
