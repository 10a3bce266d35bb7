"""Every tokenizer kind speaks its own tokenization, and the target's is the one that counts.

Two tiny families built at test time: a byte-level BPE without BOS (SmolLM2's tokenizer, the
shared tiny target) and a SentencePiece tokenizer whose default encoding starts with BOS and
whose chat template writes it (like Llama 2's). Raw and chat prompts must reach the cloud as
the target's tokenizer encodes them (exactly one BOS where it wants one, none where it does
not), SentencePiece drafts (a GGUF with its SPM vocabulary, and the HF directory itself) must
stay exact, and a pair that differs only in BOS rules must be refused.
"""

from __future__ import annotations

import shutil

import grpc
import pytest
from conftest import connected_engine, hf_greedy, run_generation
from raw_speculate import open_request, speculate
from bench.tiny_models import build_tiny_target, hf_to_gguf, tiny_sentencepiece_tokenizer_dir

from common.chat_templates import CHATML
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from edge.chat_template import render_chat

RAW_PROMPTS = [
    "Once upon a time",
    "The quick brown fox",
    " leading space, then <s> and </s> written as text",
    "def fibonacci(n):\n    return",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "Once upon a time."},
     {"role": "user", "content": "Another one."}],
]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """The SentencePiece family: target directory, its noisy GGUF draft, and a copy whose only
    difference is that its default encoding adds no BOS. Conversions go to a private cache."""
    root = tmp_path_factory.mktemp("spm")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TANDEM_CACHE_DIR", str(root / "cache"))
        target_dir = build_tiny_target(root / "spm-target", tiny_sentencepiece_tokenizer_dir(root / "tokenizer"), seed=3)
        draft = hf_to_gguf(target_dir, root / "spm-draft-noisy.gguf", noise=0.05, noise_seed=1, own_vocab=True)
        no_bos = shutil.copytree(target_dir, root / "spm-no-bos")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (no_bos / name).unlink()
        tiny_sentencepiece_tokenizer_dir(root / "tokenizer-no-bos", add_bos_token=False)
        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
            shutil.copy(root / "tokenizer-no-bos" / name, no_bos / name)
        yield {"target": target_dir, "draft": draft, "no_bos": no_bos}


@pytest.fixture(scope="module")
def spm_target(spm):
    from cloud.model import LoadOptions, TargetModel

    return TargetModel.load(str(spm["target"]), LoadOptions(device="cpu", threads=1))


@pytest.fixture(scope="module")
def spm_cloud(spm_target):
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    with EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, prefix_cache_mb=0), model=spm_target) as cloud:
        yield cloud


@pytest.fixture(scope="module")
def spm_drafter(spm):
    """spm_drafter(name) -> a LlamaDrafter: "gguf" (SPM vocabulary, noisy), "directory" (the
    target's own HF directory, converted), "no_bos"."""
    from edge.llama_drafter import LlamaDrafter

    cache = {}
    paths = {"gguf": spm["draft"], "directory": spm["target"], "no_bos": spm["no_bos"]}

    def get(name):
        if name not in cache:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("TANDEM_CACHE_DIR", str(spm["draft"].parent / "cache"))
                cache[name] = LlamaDrafter(paths[name], n_ctx=512, threads=1, f32_cache=True)
                cache[name].tokenizer  # noqa: B018 - converted inside the private cache
        return cache[name]

    yield get
    for drafter in cache.values():
        drafter.close()


def chat_reference(target, messages) -> list[int]:
    """transformers' own ids for a chat prompt rendered with the target's template."""
    ids = target.text.hf.apply_chat_template(messages, chat_template=target.chat_template,
                                             add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture(params=["bpe", "spm"])
def family(request, tiny_target, tiny_cloud, tiny_drafter):
    """(target, cloud address, draft) of each tokenizer kind."""
    if request.param == "bpe":
        return tiny_target, tiny_cloud.address, tiny_drafter("noisy")
    spm_target = request.getfixturevalue("spm_target")
    return spm_target, request.getfixturevalue("spm_cloud").address, request.getfixturevalue("spm_drafter")("gguf")


def test_the_families_differ_in_bos_rules(tiny_target, spm_target):
    assert not tiny_target.special.add_bos
    assert spm_target.special.add_bos and spm_target.special.bos_token_id is not None


def test_raw_prompts_are_the_targets_default_encoding(family):
    target, address, drafter = family
    engine = connected_engine(drafter, address)
    bos = target.special.bos_token_id
    for text in RAW_PROMPTS:
        ids = engine.encode(text)
        assert ids == list(target.text.hf(text)["input_ids"])  # transformers' default encoding
        if target.special.add_bos:
            assert ids[0] == bos and ids[1] != bos and ids[1:] == target.tokenize(text)
        else:
            assert ids == target.tokenize(text)  # nothing added


def test_chat_prompts_start_with_one_bos_where_wanted(family):
    target, address, drafter = family
    engine = connected_engine(drafter, address)
    bos = target.special.bos_token_id
    for messages in CHATS:
        ids = engine.encode_chat(messages)
        assert ids == chat_reference(target, messages)
        if target.special.add_bos:
            assert ids[0] == bos and ids[1] != bos
        else:  # nothing added to what the template wrote
            rules = target.special
            text = render_chat(target.chat_template, messages, bos_token=rules.bos_token, eos_token=rules.eos_token)
            assert ids == target.tokenize(text)


def test_a_template_without_bos_still_gets_exactly_one(spm_target):
    text = render_chat(CHATML, CHATS[0])
    ids = spm_target.text.encode_rendered_chat(text)
    bos = spm_target.special.bos_token_id
    assert ids[0] == bos and ids[1] != bos and ids[1:] == spm_target.tokenize(text)


@pytest.mark.parametrize("draft", ["gguf", "directory"])
def test_sentencepiece_drafts_stay_exact(spm_target, spm_cloud, spm_drafter, draft):
    drafter = spm_drafter(draft)
    engine = connected_engine(drafter, spm_cloud.address)
    assert drafter.fingerprint == spm_target.fingerprint
    prompts = [engine.encode(text) for text in RAW_PROMPTS[:2]] + [engine.encode_chat(m) for m in CHATS]
    accepted = drafted = 0
    for prompt in prompts:
        generation = run_generation(spm_cloud.address, drafter, prompt, NEW_TOKENS)
        assert generation.token_ids == hf_greedy(spm_target, prompt, NEW_TOKENS)
        accepted, drafted = accepted + generation.stats.accepted, drafted + generation.stats.drafted
    assert accepted > 0
    if draft == "gguf":
        assert accepted < drafted  # the noisy draft was rejected somewhere, and output stayed the target's


def test_cloud_encodes_prompt_text_with_the_bos_rule(spm_target, spm_cloud):
    text = RAW_PROMPTS[0]
    expected_prompt = list(spm_target.text.hf(text)["input_ids"])
    assert expected_prompt[0] == spm_target.special.bos_token_id
    with grpc.insecure_channel(spm_cloud.address) as channel:
        stub = pb_grpc.TandemStub(channel)
        info = stub.Info(pb.InfoRequest(), timeout=10)
        responses = [r for r in stub.Generate(pb.GenerateRequest(prompt_text=text, max_new_tokens=6), timeout=60)
                     if not r.HasField("progress")]  # the cloud's acknowledgement and progress come first
    rules = info.special_tokens
    assert rules.add_bos_token and rules.bos_token_id == expected_prompt[0] and rules.bos_token == "<s>"
    assert not rules.add_eos_token and rules.eos_token_id in info.eos_token_ids
    assert info.chat_template == spm_target.chat_template
    tokens = [r.token_id for r in responses if r.HasField("token_id")]
    assert responses[0].position == len(expected_prompt)
    assert tokens == hf_greedy(spm_target, expected_prompt, 6)[:len(tokens)] and len(tokens) >= 1


def test_a_pair_differing_only_in_bos_rules_drafts_through_text(spm_target, spm_cloud, spm_drafter, tmp_path,
                                                                 monkeypatch):
    """The fingerprints differ, so the draft is not fed the target's ids (its model was never shown
    the target's BOS): the edge fetches the target's tokenizer and drafts across vocabularies, the
    draft reading the text with its own rules. The cloud still refuses a session that declares the
    draft's fingerprint: its ids would not mean the same to both."""
    from edge.cross_vocab import CrossVocabDrafter

    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path))
    drafter = spm_drafter("no_bos")
    text = RAW_PROMPTS[1]
    # Same vocabulary, same ids for the same text; only the default encoding's BOS differs.
    assert drafter.tokenize(text) == spm_target.tokenize(text)
    assert drafter.tokenizer.encode(text) == spm_target.encode(text)[1:]
    assert drafter.fingerprint != spm_target.fingerprint

    engine = connected_engine(drafter, spm_cloud.address)
    assert isinstance(engine.drafter, CrossVocabDrafter)
    prompt = engine.encode(text)
    assert prompt == spm_target.encode(text)  # the target's BOS, not the draft's rules
    assert run_generation(spm_cloud.address, engine.drafter, prompt, 8).token_ids == hf_greedy(spm_target, prompt, 8)

    request = open_request(spm_target, spm_target.encode(text), tokenizer_fingerprint=drafter.fingerprint,
                           draft_model_name=drafter.name)
    responses, code, details = speculate(spm_cloud.address, [request], timeout=30)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and not responses
    assert drafter.name in details and spm_target.name in details
