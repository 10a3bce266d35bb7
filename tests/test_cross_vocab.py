"""A draft of another vocabulary, verified by the target: greedy output is the target's own.

The pair is built at test time with deliberately mismatched tokenizers: the target speaks
SmolLM2's byte-level BPE ("Ġ" spaces, emoji split into byte-level pieces), the draft a tiny
SentencePiece BPE ("▁" spaces, <0xNN> byte fallback for emoji and CJK, " quick" as "▁qu" "ick").
Both are bigram models (tests/cross_vocab_models.py) that write nearly the same sentence, the
draft with deliberate slips, so drafts are accepted in long runs and rejected at the slips:
every text boundary the adapter handles occurs (a draft token ending inside a target token, a
character split differently on both sides, byte-fallback pieces, the target's end of sequence
and the draft's own end of turn), and rejections happen at the first draft of a block, within
one, and not at all. The reference is transformers' generate(do_sample=False) on the target.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from conftest import hf_greedy
from cross_vocab_models import bigram_gguf, build_bigram_model, chain_rows, silent_gguf

from common.errors import FailedPrecondition
from edge.client import CloudClient
from edge.cross_vocab import CrossVocabDrafter
from edge.engine import EdgeEngine, GenerationRequest, Mode
from edge.speculation_config import SpeculationConfig

SENTENCE = " The quick brown fox jumps over a lazy dog🚀 in 中 land."
DRAFT_SENTENCE = " The quick curious fox jumps over a lazy dog🚀 in 中 time."  # two slips
PROMPTS = ["Story:", "Once upon a time:", "x:"]
NEW_TOKENS = 48


def token_ids(hf, text: str) -> list[int]:
    return list(hf(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(target TargetModel, draft GGUF path, private cache dir): a BPE target, an SPM draft."""
    from transformers import AutoTokenizer

    from bench.tiny_models import smollm2_tokenizer_dir, tiny_sentencepiece_tokenizer_dir
    from cloud.model import LoadOptions, TargetModel

    root = tmp_path_factory.mktemp("cross-vocab")
    bpe_dir, spm_dir = smollm2_tokenizer_dir(root), tiny_sentencepiece_tokenizer_dir(root / "spm-tokenizer")
    bpe, spm = AutoTokenizer.from_pretrained(bpe_dir), AutoTokenizer.from_pretrained(spm_dir)
    colon_bpe, colon_spm = token_ids(bpe, PROMPTS[0])[-1:], token_ids(spm, PROMPTS[0])[-1:]  # ":"
    target_chain = colon_bpe + token_ids(bpe, SENTENCE)
    draft_chain = colon_spm + token_ids(spm, DRAFT_SENTENCE)
    target_dir = build_bigram_model(root / "target", bpe_dir, chain_rows(target_chain, bpe.eos_token_id))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TANDEM_CACHE_DIR", str(root / "cache"))
        draft = bigram_gguf(root / "draft", spm_dir, chain_rows(draft_chain, spm.eos_token_id), own_vocab=True)
    for text in PROMPTS:  # every prompt ends where both chains begin
        assert token_ids(bpe, text)[-1:] == colon_bpe and token_ids(spm, text)[-1:] == colon_spm
    # The boundaries the test is about really occur in this sentence.
    spm_pieces = spm.convert_ids_to_tokens(token_ids(spm, DRAFT_SENTENCE))
    assert "<0xF0>" in spm_pieces and "ick" in spm_pieces
    target = TargetModel.load(str(target_dir), LoadOptions(device="cpu", threads=1))
    return target, draft, root / "cache"


@pytest.fixture(scope="module")
def cloud(pair):
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=pair[0]) as cloud:
        yield cloud


@pytest.fixture(scope="module")
def draft(pair):
    from edge.llama_drafter import LlamaDrafter

    _, path, cache = pair
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TANDEM_CACHE_DIR", str(cache))
        drafter = LlamaDrafter(path, n_ctx=512, threads=1, f32_cache=True)
        drafter.tokenizer  # noqa: B018 - converted inside the private cache
    yield drafter
    drafter.close()


async def generate(address, drafter, target, prompt, **config):
    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, SpeculationConfig(adaptive=False, **config),
                            target_tokenizer=lambda: target.text)
        await engine.connect()
        generation = await engine.generate_to_end(GenerationRequest(prompt, NEW_TOKENS), Mode.HYBRID)
        return engine, generation
    finally:
        await client.close()


def test_the_vocabularies_really_differ(pair, draft):
    target = pair[0]
    assert draft.fingerprint != target.fingerprint and draft.vocab_size != target.vocab_size


def test_greedy_hybrid_equals_target_generate_with_rejections_in_every_position_class(pair, cloud, draft):
    target = pair[0]
    outcomes = Counter()
    accepted = drafted = 0
    for draft_tokens, max_in_flight in [(1, 1), (3, 1), (4, 2), (6, 1), (2, 3)]:
        for text in PROMPTS:
            prompt = target.encode(text)
            engine, generation = asyncio.run(generate(cloud.address, draft, target, prompt,
                                                      draft_tokens=draft_tokens, max_in_flight=max_in_flight))
            assert isinstance(engine.drafter, CrossVocabDrafter)
            expected = hf_greedy(target, prompt, NEW_TOKENS)
            assert generation.token_ids == expected, (draft_tokens, max_in_flight, text)
            assert expected[-1] in target.eos_token_ids  # the answer ends with the target's end
            for drafted, accepted in generation.stats.verified_blocks:
                if drafted:
                    outcomes["none" if accepted == 0 else "all" if accepted == drafted else "some"] += 1
            stats = generation.stats
            assert stats.accepted <= stats.drafted and stats.tokens == len(expected)
            accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
    assert accepted > drafted / 2  # the draft's text, in target tokens, mostly stood
    # Rejected at a block's first draft, within a block, and whole blocks accepted.
    assert outcomes["none"] > 0 and outcomes["some"] > 0 and outcomes["all"] > 0, outcomes


def test_the_draft_end_of_turn_becomes_the_targets_end(pair, cloud, draft):
    """The draft's </s> after "." is proposed as the target's EOS, and accepted."""
    target = pair[0]
    prompt = target.encode(PROMPTS[0])
    expected = hf_greedy(target, prompt, NEW_TOKENS)
    context = prompt + expected[:-1]  # the target has written the whole sentence
    engine, _ = asyncio.run(generate(cloud.address, draft, target, prompt, draft_tokens=2))
    adapter = engine.drafter
    adapter.start(prompt)
    logits = adapter.next_logits(context)
    assert int(logits.argmax()) == expected[-1] == pair[0].special.eos_token_id


def test_same_vocabulary_pairs_keep_the_id_path(tiny_cloud, tiny_drafter, tiny_target):
    drafter = tiny_drafter("noisy")
    engine, _ = asyncio.run(generate(tiny_cloud.address, drafter, tiny_target, drafter.tokenize("Hi"),
                                     draft_tokens=2))
    assert engine.drafter is drafter


def rpc_calls(cloud, method: str) -> int:
    """How many `method` calls the cloud finished, whatever their status."""
    return sum(sample.value for metric in cloud.running.metrics.rpc_total.collect() for sample in metric.samples
               if sample.name.endswith("_total") and sample.labels["method"] == method)


async def answers_without_local_target_tokenizer(address, drafter, prompts):
    """An engine on a remote cloud, given no copy of the target's tokenizer, and its greedy answers."""
    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, SpeculationConfig(adaptive=False, draft_tokens=4))
        await engine.connect()
        return engine, [await engine.generate_to_end(GenerationRequest(prompt, NEW_TOKENS), Mode.HYBRID)
                        for prompt in prompts]
    finally:
        await client.close()


def test_a_remote_mismatched_pair_fetches_the_targets_tokenizer_once_and_answers_as_the_target(
        pair, cloud, draft, tmp_path, monkeypatch, capfd):
    """No --target-tokenizer: the edge fetches it (GetTokenizer), checks and caches it by fingerprint."""
    from edge.tokenizer import fetched_folder

    target = pair[0]
    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path))
    prompts = [target.encode(text) for text in PROMPTS]
    calls = rpc_calls(cloud, "GetTokenizer")
    engine, generations = asyncio.run(answers_without_local_target_tokenizer(cloud.address, draft, prompts))
    assert isinstance(engine.drafter, CrossVocabDrafter)
    for prompt, generation in zip(prompts, generations):
        assert generation.token_ids == hf_greedy(target, prompt, NEW_TOKENS)
        assert generation.stats.drafted > 0
    assert rpc_calls(cloud, "GetTokenizer") == calls + 1
    assert "fetching the tokenizer of the cloud model" in capfd.readouterr().err
    folder = fetched_folder(target.fingerprint)
    assert (folder / "tokenizer.json").is_file() and not list(tmp_path.glob("tokenizers/*partial*"))

    engine, _ = asyncio.run(answers_without_local_target_tokenizer(cloud.address, draft, prompts[:1]))
    assert isinstance(engine.drafter, CrossVocabDrafter)
    assert rpc_calls(cloud, "GetTokenizer") == calls + 1  # the second start read the cache
    assert "fetching" not in capfd.readouterr().err


def test_a_fetched_tokenizer_that_is_not_the_advertised_one_is_refused_naming_both(pair, cloud, draft, tmp_path,
                                                                                     monkeypatch):
    """Files that do not give Info's fingerprint (corrupted on the way, or another replica's model
    behind the same address) are refused and never cached, whatever fingerprint the stream claims."""
    import dataclasses
    import zlib

    from edge.tokenizer import cloud_tokenizer, fetched_folder, tokenizer_files

    target = pair[0]
    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path))

    async def fetch(change):
        """cloud_tokenizer over the cloud's real GetTokenizer stream, each chunk passed through change()."""
        client = CloudClient(cloud.address)
        try:
            info = await client.info()
            chunks = [change(chunk) async for chunk in client.tokenizer_chunks(max_chunk_bytes=4096)]
            assert len(chunks) > 2  # several chunks: order and offsets are exercised

            async def stream():
                for chunk in chunks:
                    yield chunk

            return await cloud_tokenizer(stream(), info, draft.name)
        finally:
            await client.close()

    def flip_a_byte(chunk):
        if chunk.file_name != "tokenizer.json" or chunk.offset != 4096:
            return chunk
        data = bytearray(zlib.decompress(chunk.data) if chunk.zlib else chunk.data)
        data[100] ^= 0x01
        return dataclasses.replace(chunk, data=bytes(data), zlib=False)

    other = tokenizer_files(pair[2].parent / "spm-tokenizer")  # another model's files, as the edge writes them
    other_files = {name: (other / name).read_bytes() for name in ("tokenizer.json", "tandem_tokenizer.json")}

    def another_models_files(chunk):
        """The other model's file, whole, in place of the first chunk of each file; the rest empty."""
        data = other_files[chunk.file_name]
        offset = 0 if chunk.offset == 0 else len(data)
        return dataclasses.replace(chunk, data=data[offset:], zlib=False, offset=offset, file_size=len(data))

    def inflating_beyond_its_size(chunk):
        if chunk.file_name != "tokenizer.json" or chunk.offset != 0:
            return chunk
        return dataclasses.replace(chunk, data=zlib.compress(b" " * (64 << 20)), zlib=True)

    for change in (flip_a_byte, another_models_files, inflating_beyond_its_size):
        with pytest.raises(FailedPrecondition) as refused:
            asyncio.run(fetch(change))
        assert draft.name in str(refused.value) and target.name in str(refused.value), refused.value
        assert "--target-tokenizer" in str(refused.value)
        assert not fetched_folder(target.fingerprint).exists()
    assert asyncio.run(fetch(lambda chunk: chunk)).fingerprint == target.fingerprint  # the real files pass


def test_a_tokenizer_that_is_not_the_targets_is_refused_naming_both(pair, cloud, draft):
    from edge.tokenizer import load_tokenizer

    root = pair[2].parent
    right, wrong = load_tokenizer(root / "target"), load_tokenizer(root / "spm-tokenizer")

    async def connect(tokenizer):
        client = CloudClient(cloud.address)
        try:
            engine = EdgeEngine(draft, client, target_tokenizer=lambda: tokenizer)
            await engine.connect()
            return engine
        finally:
            await client.close()

    with pytest.raises(FailedPrecondition) as refused:
        asyncio.run(connect(wrong))
    assert draft.name in str(refused.value) and pair[0].name in str(refused.value)
    assert isinstance(asyncio.run(connect(right)).drafter, CrossVocabDrafter)  # the target's own is taken


def test_the_draft_reads_a_chat_with_its_own_template(pair, cloud, draft):
    from edge.chat_template import render_chat

    target = pair[0]
    messages = [{"role": "user", "content": "Tell me a story."}]
    engine, _ = asyncio.run(generate(cloud.address, draft, target, target.encode(PROMPTS[0]), draft_tokens=2))
    ids = engine.encode_chat(messages)
    assert "<|im_start|>" in target.chat_template and "[INST]" in draft.chat_template  # two templates
    rules = draft.tokenizer.special
    own = draft.tokenizer.encode_rendered_chat(render_chat(draft.chat_template, messages, bos_token=rules.bos_token,
                                                           eos_token=rules.eos_token))
    assert engine.drafter.draft_context(ids) == own
    # A raw prompt is read as its text, encoded by the draft's tokenizer with its own BOS rule.
    raw = target.encode(PROMPTS[1])
    assert engine.drafter.draft_context(raw) == draft.tokenizer.encode(PROMPTS[1])


def test_a_draft_without_any_text_is_refused_naming_both(pair, cloud):
    """A pair that cannot work is refused when the session would start, not mid-answer."""
    from bench.tiny_models import smollm2_tokenizer_dir
    from edge.llama_drafter import LlamaDrafter
    from edge.tokenizer import load_tokenizer

    target, _, cache = pair
    root = cache.parent
    silent = LlamaDrafter(silent_gguf(root / "silent", smollm2_tokenizer_dir(root)), n_ctx=64, threads=1)
    try:
        assert not any(silent.token_bytes(i) for i in range(silent.vocab_size))

        async def connect():
            client = CloudClient(cloud.address)
            try:
                await EdgeEngine(silent, client, target_tokenizer=lambda: load_tokenizer(root / "target")).connect()
            finally:
                await client.close()

        with pytest.raises(FailedPrecondition, match="detokenizes to empty text") as refused:
            asyncio.run(connect())
        assert silent.name in str(refused.value) and target.name in str(refused.value)
    finally:
        silent.close()


def test_a_target_tokenizer_that_cannot_encode_text_is_refused_naming_both(draft):
    """A target whose tokenizer turns text into unknown tokens can verify nothing a draft writes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from common.text_tokenizer import TextTokenizer
    from common.wire import ModelInfo
    from edge.cross_vocab import check_pair

    words = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hello": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    broken = TextTokenizer(PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="</s>"))
    info = ModelInfo(model_name="words-only", vocab_size=3, tokenizer_fingerprint=broken.fingerprint,
                     eos_token_ids=[1], max_context=64, special_tokens=broken.special)
    with pytest.raises(FailedPrecondition, match="does not encode text") as refused:
        check_pair(draft, broken, info)
    assert draft.name in str(refused.value) and "words-only" in str(refused.value)


def test_concurrent_answers_draft_in_sibling_contexts(pair, cloud, draft):
    target = pair[0]

    async def both():
        client = CloudClient(cloud.address)
        engine = EdgeEngine(draft, client, SpeculationConfig(adaptive=False, draft_tokens=3), draft_slots=2,
                            target_tokenizer=lambda: target.text)
        try:
            await engine.connect()
            return await asyncio.gather(*(engine.generate_to_end(GenerationRequest(target.encode(text), NEW_TOKENS),
                                                                 Mode.HYBRID) for text in PROMPTS[:2]))
        finally:
            await engine.close()  # closes the sibling context it made
            await client.close()

    for text, generation in zip(PROMPTS[:2], asyncio.run(both())):
        assert generation.token_ids == hf_greedy(target, target.encode(text), NEW_TOKENS)
        assert generation.stats.accepted > 0
