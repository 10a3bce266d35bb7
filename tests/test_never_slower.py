"""Never slower than cloud-only (issue 19): the cloud decodes alone within a hybrid session when
drafting does not pay, and the answer stays exactly the target's whichever mode made each token.

Real engines throughout (the tiny transformers target behind a real gRPC server, llama.cpp
drafts). The pure decision has its own tests (tests/test_drafting_pays.py); here a scripted
switch forces mode changes mid-answer, so the wiring is proven independent of timing.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from conftest import hf_greedy
from raw_speculate import OK, draft, open_request, speculate

from common.pb.tandem.v1 import tandem_pb2 as pb
from common.wire import FinishReason, SamplingParams, SessionOpen
from edge.client import CloudClient
from edge.drafting_pays import DraftingSwitch
from edge.engine import EdgeEngine, GenerationRequest, Mode
from edge.speculation_config import SpeculationConfig
from edge.speculative import SpeculativeRun

NEW_TOKENS = 40
PROMPTS = ["The quick brown fox", "def fibonacci(n):\n    return"]


@pytest.fixture(scope="module")
def random_drafter(tmp_path_factory):
    """A draft that agrees with nothing: another random tiny model, with the target's tokenizer."""
    from bench.tiny_models import build_tiny_target, hf_to_gguf, smollm2_tokenizer_dir
    from edge.llama_drafter import LlamaDrafter

    root = tmp_path_factory.mktemp("random-draft")
    other = build_tiny_target(root / "other", smollm2_tokenizer_dir(root), seed=7)
    drafter = LlamaDrafter(hf_to_gguf(other, root / "random.gguf"), n_ctx=1024, threads=1, f32_cache=True)
    yield drafter
    drafter.close()


async def _generate(address, drafter, prompt, mode=Mode.HYBRID, sampling=SamplingParams(), **config):
    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, SpeculationConfig(**config))
        await engine.connect()
        return await engine.generate_to_end(GenerationRequest(prompt, NEW_TOKENS, sampling), mode)
    finally:
        await client.close()


def test_a_draft_that_agrees_with_nothing_ends_in_cloud_decoding(tiny_cloud, tiny_target, random_drafter):
    from edge.metrics import EdgeMetrics

    metrics = EdgeMetrics()
    hinted = 0
    for text in PROMPTS:
        prompt = random_drafter.tokenize(text)
        generation = asyncio.run(_generate(tiny_cloud.address, random_drafter, prompt))
        assert generation.token_ids == hf_greedy(tiny_target, prompt, NEW_TOKENS)
        s = generation.stats
        # It stops drafting, or, where the cloud takes the draft's guesses, never starts.
        assert s.cloud_decoded > NEW_TOKENS // 2, s
        assert s.mode_switches >= 1 or (s.drafted == 0 and s.shadow_checked > 0), s
        pays = s.as_dict()["pays"]  # what `tandem generate --json` prints
        assert pays["drafting"] is False and pays["cloud_step_ms"] > 0
        assert pays["hybrid_tokens_per_s"] < pays["cloud_tokens_per_s"]
        assert s.shadow_agreed <= s.shadow_checked
        # Every round is one forward pass: the first token, each block, each decoding step, which
        # commits one token and any guesses it confirmed (no prefix cache).
        assert s.cloud_forward_passes == s.rounds == len(s.verified_blocks) + 1 + s.cloud_decoded - s.hinted
        metrics.answered(generation, "completed")
        hinted += s.hinted
        page = metrics.exposition().decode()
        assert _value(page, "tandem_edge_drafting") == 0
        assert _value(page, "tandem_edge_expected_tokens_per_second", 'mode="cloud"') == pays["cloud_tokens_per_s"]
        assert _value(page, "tandem_edge_drafting_pays_input", 'input="cloud_step"') > 0
    assert _value(page, "tandem_edge_cloud_decoded_tokens_total") > NEW_TOKENS
    assert _value(page, "tandem_edge_hinted_tokens_total") == hinted


def test_the_switch_can_be_turned_off(tiny_cloud, tiny_target, random_drafter):
    prompt = random_drafter.tokenize(PROMPTS[0])
    generation = asyncio.run(_generate(tiny_cloud.address, random_drafter, prompt, cloud_decode=False))
    assert generation.token_ids == hf_greedy(tiny_target, prompt, NEW_TOKENS)
    assert generation.stats.cloud_decoded == generation.stats.mode_switches == 0


class FlippingSwitch(DraftingSwitch):
    """Switches mode after every `period` verdicts or shadow predictions, whatever the rates."""

    def __init__(self, period: int):
        super().__init__()
        self.period = period

    def update(self, inputs) -> bool:
        if self.evidence < self.period:
            return False
        self.drafting, self.evidence, self.switches = not self.drafting, 0, self.switches + 1
        return True


async def _flipping(address, drafter, prompt, sampling, period):
    """A hybrid answer through SpeculativeRun whose mode flips every `period` pieces of evidence."""
    client = CloudClient(address)
    try:
        info = await client.info()
        request = SessionOpen(prompt, NEW_TOKENS, sampling, tokenizer_fingerprint=drafter.fingerprint,
                              draft_model_name=drafter.name)
        run = SpeculativeRun(drafter, client.speculate(), request, SpeculationConfig())
        run.stop_ids |= set(info.eos_token_ids)
        run.switch = FlippingSwitch(period)
        ids = []
        async for _, new in run.tokens():
            ids += new
        return ids, run.stats
    finally:
        await client.close()


@pytest.mark.parametrize("period", [2, 5])
@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(0.8, 50, 1.0, seed=1234),
                                      SamplingParams(1.0, 0, 0.9, seed=7)], ids=["greedy", "t0.8", "top-p"])
def test_switching_to_cloud_decoding_and_back_mid_answer_stays_exact(tiny_cloud, tiny_drafter, sampling, period):
    drafter = tiny_drafter("noisy")
    for text in PROMPTS:
        prompt = drafter.tokenize(text)
        ids, stats = asyncio.run(_flipping(tiny_cloud.address, drafter, prompt, sampling, period))
        own = asyncio.run(_generate(tiny_cloud.address, drafter, prompt, Mode.CLOUD, sampling))
        assert ids == own.token_ids  # the target's own answer, greedy or with the same seed
        if len(ids) == NEW_TOKENS:  # long enough to have switched to the cloud
            assert stats.mode_switches >= 1 and stats.cloud_decoded > 0 and stats.drafted > 0, stats
            # Back to drafting takes `period` shadow predictions, and how many the draft makes
            # while the cloud streams depends on the machine's speed, not on the rule under test.
            if stats.shadow_checked >= period:
                assert stats.mode_switches >= 2, stats


def _value(page: str, name: str, labels: str = "") -> float:
    pattern = rf"^{name}{{{labels}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    return float(re.search(pattern, page, re.M).group(1))


# --- the cloud side, message by message ----------------------------------------------------------


def decode(start, tokens):
    return pb.SpeculateRequest(decode=pb.CloudDecode(start_position=start, max_tokens=tokens))


def test_cloud_decode_requests_chain_go_stale_and_mix_with_draft_blocks(tiny_cloud, tiny_target):
    prompt = tiny_target.tokenize("Hello there, limits")
    p = len(prompt)
    want = hf_greedy(tiny_target, prompt, 12)  # want[i] sits at position p + i
    responses, code, _ = speculate(tiny_cloud.address, [
        open_request(tiny_target, prompt, max_new_tokens=12),
        decode(p + 1, 4),  # positions p+1 .. p+4
        decode(p + 3, 2),  # wrong start (p+5 expected): stale, answered in its turn
        decode(p + 5, 3),  # sent ahead: continues at p+5 .. p+7
        draft(p + 7, [want[7], want[8], (want[9] + 1) % tiny_target.vocab_size]),  # one draft accepted
        decode(p + 10, 5),  # p+10, p+11: the generation ends at 12 tokens
        decode(p + 12, 2),  # after the finish: stale
    ])
    assert code == OK
    kinds = [r.WhichOneof("kind") for r in responses]
    assert kinds == ["started"] + ["decoded"] * 5 + ["decoded"] * 3 + ["verdict"] + ["decoded"] * 2 + ["decoded"]
    started, decoded = responses[0].started, [r.decoded for r in responses if r.HasField("decoded")]
    assert started.token_id == want[0] and started.decode_step_us > 0
    first, stale, second = decoded[:4], decoded[4], decoded[5:8]
    assert [(d.position, d.token_id) for d in first + second] == [(p + i, want[i]) for i in range(1, 8)]
    assert stale.stale and stale.position == p + 3 and not stale.HasField("token_id")
    # Forward passes and the step estimate ride only on the last answer to each request.
    assert [d.forward_passes > 0 for d in first] == [False, False, False, True]
    assert first[-1].decode_step_us > 0
    verdict = responses[9].verdict
    assert (verdict.accepted_count, verdict.next_token, verdict.stale) == (1, want[9], False)
    assert verdict.decode_step_us > 0
    last, after = decoded[8:10], decoded[10]
    assert [(d.position, d.token_id) for d in last] == [(p + 10, want[10]), (p + 11, want[11])]
    assert last[-1].finish_reason == FinishReason.LENGTH
    assert after.stale and after.finish_reason == FinishReason.LENGTH


def test_cloud_decode_before_open_or_with_no_tokens_is_refused(tiny_cloud, tiny_target):
    _, code, details = speculate(tiny_cloud.address, [decode(0, 4)])
    assert code.name == "INVALID_ARGUMENT" and "open" in details
    prompt = tiny_target.tokenize("Hello there, limits")
    _, code, details = speculate(tiny_cloud.address, [open_request(tiny_target, prompt), decode(len(prompt) + 1, 0)])
    assert code.name == "INVALID_ARGUMENT" and "max_tokens" in details
