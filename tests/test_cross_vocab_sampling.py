"""Sampled output of a cross-vocabulary pair follows the target's exact distribution.

The pair is mismatched the other way round from tests/test_cross_vocab.py: a tiny SentencePiece
target and a byte-level BPE draft, both bigram models (tests/cross_vocab_models.py) whose next
token is spread over a few candidates. The draft puts much of its mass on " quick", one token
for it but two ("▁qu" "ick") for the target, outside the token-level intersection (TLI), so the
draft's restricted, renormalized q differs from its raw distribution: exactly where a wrong
acceptance rule would show. The reference is the joint distribution of the first two sampled
tokens, p(t1) p(t2 | t1), from the target model's own logits; each seed is one generation,
judged by Pearson's chi-square at ALPHA with an exact p-value (as tests/test_sampled_exact.py).
The test's power is shown twice: the distribution the wrong rule "accept with min(1, p/q) for
the draft's unrestricted q" would produce lies far beyond the rejection threshold, and a
simulation of that rule is rejected by the same test.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from cross_vocab_models import bigram_gguf, build_bigram_model
from stats import ALPHA, assert_pairs_follow, chi_square

from common.sampling import logits_to_probs
from common.wire import DraftMode, SamplingParams
from edge.client import CloudClient
from edge.cross_vocab import CrossVocabDrafter
from edge.engine import EdgeEngine, Generation, GenerationRequest, Mode
from edge.speculation_config import SpeculationConfig

PROMPT = "Story:"
TEMPERATURE, TOP_K = 1.0, 3
SAMPLES = 1000

TARGET_ROWS = {  # SentencePiece pieces of the target: logits after each
    ":": {"\u2581The": 2.0, "\u2581qu": 1.5, "\u2581a": 1.0},
    "\u2581The": {"\u2581fox": 1.5, "\u2581dog": 1.0, "\u2581land": 0.5},
    "\u2581qu": {"ick": 1.5, "\u2581fox": 0.5, "\u2581dog": 1.0},
    "\u2581a": {"\u2581fox": 1.0, "\u2581dog": 0.5, "\u2581land": 1.5},
    **{piece: {"</s>": 3.0} for piece in ("\u2581fox", "\u2581dog", "\u2581land", "ick")},
}
DRAFT_ROWS = {  # byte-level BPE pieces of the draft: " quick" (Ġquick) has no twin in the target
    ":": {"\u0120The": 1.5, "\u0120quick": 1.5, "\u0120a": 0.8, "\u0120fox": 0.3},
    "\u0120The": {"\u0120fox": 1.0, "\u0120dog": 1.2, "\u0120land": 0.2, "\u0120quick": 1.4},
    "\u0120qu": {"ick": 1.0, "\u0120fox": 0.5, "\u0120quick": 1.2},
    "\u0120a": {"\u0120fox": 0.6, "\u0120dog": 0.9, "\u0120land": 1.4, "\u0120quick": 1.1},
}


def rows_by_id(hf, rows: dict[str, dict[str, float]]) -> dict[int, dict[int, float]]:
    def ids(piece: str) -> int:
        token = hf.convert_tokens_to_ids(piece)
        assert token is not None and token != hf.unk_token_id, piece
        return token

    return {ids(a): {ids(b): logit for b, logit in successors.items()} for a, successors in rows.items()}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(target TargetModel, draft LlamaDrafter): an SPM target, a BPE draft."""
    from transformers import AutoTokenizer

    from bench.tiny_models import smollm2_tokenizer_dir, tiny_sentencepiece_tokenizer_dir
    from cloud.model import LoadOptions, TargetModel
    from edge.llama_drafter import LlamaDrafter

    root = tmp_path_factory.mktemp("cross-vocab-sampling")
    bpe_dir, spm_dir = smollm2_tokenizer_dir(root), tiny_sentencepiece_tokenizer_dir(root / "spm-tokenizer")
    bpe, spm = AutoTokenizer.from_pretrained(bpe_dir), AutoTokenizer.from_pretrained(spm_dir)
    target_dir = build_bigram_model(root / "target", spm_dir, rows_by_id(spm, TARGET_ROWS))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TANDEM_CACHE_DIR", str(root / "cache"))
        draft_path = bigram_gguf(root / "draft", bpe_dir, rows_by_id(bpe, DRAFT_ROWS), own_vocab=False)
        drafter = LlamaDrafter(draft_path, n_ctx=256, threads=1, f32_cache=True)
        drafter.tokenizer  # noqa: B018 - converted inside the private cache
    target = TargetModel.load(str(target_dir), LoadOptions(device="cpu", threads=1))
    yield target, drafter
    drafter.close()


@pytest.fixture(scope="module")
def cloud(pair):
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=pair[0]) as cloud:
        yield cloud


async def generate_many(address, drafter, target, prompt, seeds, draft_mode, mode=Mode.HYBRID
                        ) -> tuple[list, list, CrossVocabDrafter]:
    """One 3-token generation per seed; t2 always comes from verifying one drafted token."""
    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, SpeculationConfig(draft_tokens=2, adaptive=False),
                            target_tokenizer=lambda: target.text)
        await engine.connect()
        runs, blocks = [], []
        for seed in seeds:
            request = GenerationRequest(prompt, 3, SamplingParams(TEMPERATURE, TOP_K, 1.0, seed), draft_mode=draft_mode)
            generation = Generation(mode)
            async for _ in engine.generate(request, mode, generation):
                pass
            runs.append(generation.token_ids)
            blocks.append(generation.stats.verified_blocks[0] if mode == Mode.HYBRID else None)
        return runs, blocks, engine.drafter
    finally:
        await client.close()


def target_probs(target, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        logits = target.model(torch.tensor([ids], device=target.device)).logits[0, -1].float().cpu().numpy()
    return logits_to_probs(logits, TEMPERATURE, TOP_K)


def draft_distributions(adapter: CrossVocabDrafter, context: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(q, q_raw) over target ids after `context`: TLI's restricted, renormalized q, and the
    draft's own distribution carried over to target ids *without* restriction or renormalization
    (mass on tokens without a twin is simply missing): the q of the wrong rule."""
    adapter.use_sampling(SamplingParams(TEMPERATURE, TOP_K, 1.0, 0))
    q = logits_to_probs(adapter.next_logits(context), TEMPERATURE, TOP_K)
    own = logits_to_probs(adapter.draft.next_logits(adapter.draft_context(context)), TEMPERATURE, TOP_K)
    q_raw = np.zeros_like(q)
    np.add.at(q_raw, adapter.intersection.target_ids, own[adapter.intersection.draft_ids])
    return q, q_raw


def verified(p: np.ndarray, q: np.ndarray, q_rule: np.ndarray) -> np.ndarray:
    """The distribution of the committed token when the draft samples from q and the verifier
    applies the rejection rule with q_rule (exactly p when q_rule is q)."""
    ratio = np.divide(p, q_rule, out=np.ones_like(p), where=q_rule > 0)
    accepted = q * np.minimum(1.0, ratio)
    residual = np.maximum(p - q_rule, 0.0)
    residual = residual / residual.sum() if residual.sum() > 0 else p
    return accepted + (1.0 - accepted.sum()) * residual


@pytest.fixture(scope="module")
def reference(pair, cloud):
    target, drafter = pair
    prompt = target.encode(PROMPT)
    _, _, adapter = asyncio.run(generate_many(cloud.address, drafter, target, prompt, [1], DraftMode.SPARSE_Q))
    adapter.start(prompt)
    p1 = target_probs(target, prompt)
    cells, exact, wrong = [], [], []
    for t1 in np.flatnonzero(p1):
        context = [*prompt, int(t1)]
        p2 = target_probs(target, context)
        q, q_raw = draft_distributions(adapter, context)
        np.testing.assert_allclose(verified(p2, q, q), p2, atol=1e-12)  # the rule with the true q is exact
        bad = verified(p2, q, q_raw)
        for t2 in np.flatnonzero((p2 > 0) | (bad > 0)):
            cells.append((int(t1), int(t2)))
            exact.append(p1[t1] * p2[t2])
            wrong.append(p1[t1] * bad[t2])
    return prompt, cells, np.array(exact), np.array(wrong)


def test_the_draft_proposes_tokens_without_a_twin_nowhere_and_the_pair_differs(pair, reference):
    target, drafter = pair
    assert drafter.vocab_size != target.vocab_size and drafter.fingerprint != target.fingerprint
    _, _, exact, wrong = reference
    assert np.abs(exact - wrong).sum() > 0.1  # the wrong rule really gives another distribution


@pytest.mark.parametrize("draft_mode", [DraftMode.SPARSE_Q, DraftMode.TOKEN_IDS])
def test_first_two_sampled_tokens_follow_the_target_distribution(pair, cloud, reference, draft_mode):
    target, drafter = pair
    prompt, cells, exact, wrong = reference
    runs, blocks, _ = asyncio.run(generate_many(cloud.address, drafter, target, prompt, range(1, SAMPLES + 1),
                                                draft_mode))
    assert all(len(run) >= 2 for run in runs)
    assert all(drafted == 1 for drafted, _ in blocks)  # t2 always came from a verified draft
    rejected = sum(accepted == 0 for _, accepted in blocks)
    assert 0.1 * SAMPLES < rejected < 0.9 * SAMPLES  # both outcomes happen, often
    assert_pairs_follow([run[:2] for run in runs], cells, exact, {"wrong acceptance rule": wrong})

    again, _, _ = asyncio.run(generate_many(cloud.address, drafter, target, prompt, range(1, 41), draft_mode))
    assert again == runs[:40]  # seeds reproduce
    if draft_mode == DraftMode.TOKEN_IDS:
        # Ids-only: every committed token is the target's own keyed sample, so the answer is the
        # cloud-only answer of the same seed, token for token, whatever the draft proposed.
        alone, _, _ = asyncio.run(generate_many(cloud.address, drafter, target, prompt, range(1, 201), draft_mode,
                                                Mode.CLOUD))
        assert alone == runs[:200]


def test_the_chi_square_rejects_a_simulated_wrong_rule(reference):
    """The same test, fed SAMPLES draws from the wrong rule's distribution, rejects it."""
    _, cells, exact, wrong = reference
    rng = np.random.default_rng(0)
    rejections = 0
    for _ in range(20):
        counts = rng.multinomial(SAMPLES, wrong / wrong.sum()).astype(float)
        if (counts[exact == 0] > 0).any() or chi_square(counts, exact).p_value < ALPHA:
            rejections += 1
    assert rejections >= 19
