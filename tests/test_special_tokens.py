"""BOS/EOS rules, end-of-generation ids, built-in templates and fingerprints, without models."""

from __future__ import annotations

import pytest

from common.chat_templates import CHATML, GEMMA, builtin_chat_template
from common.fingerprint import tokenizer_fingerprint
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.special_tokens import SpecialTokens, detect_rules, end_of_generation_ids
from common.wire import ModelInfo
from edge.chat_template import render_chat

BOS, EOS = 2, 1
WANTS_BOS = SpecialTokens(BOS, "<bos>", True, EOS, "<eos>", False)
NO_BOS = SpecialTokens(BOS, "<bos>", False, EOS, "<eos>", False)
BOTH = SpecialTokens(BOS, "<bos>", True, EOS, "<eos>", True)


@pytest.mark.parametrize("rules,ids,raw,chat", [
    (WANTS_BOS, [7, 8], [BOS, 7, 8], [BOS, 7, 8]),
    (WANTS_BOS, [BOS, 7], [BOS, BOS, 7], [BOS, 7]),  # a template's own BOS is not doubled
    (NO_BOS, [7, 8], [7, 8], [7, 8]),
    (NO_BOS, [BOS, 7], [BOS, 7], [BOS, 7]),  # nothing added, nothing removed
    (BOTH, [7], [BOS, 7, EOS], [BOS, 7]),  # no EOS on a chat prompt: the reply follows it
])
def test_wrap_rules(rules, ids, raw, chat):
    assert rules.wrap(ids) == raw
    assert rules.wrap_chat(ids) == chat


def test_rules_need_the_token_they_add():
    with pytest.raises(ValueError):
        SpecialTokens(None, "", True)


@pytest.mark.parametrize("prefix,suffix,add_bos,add_eos", [([], [], False, False), ([BOS], [], True, False),
                                                          ([BOS], [EOS], True, True), ([], [EOS], False, True)])
def test_detect_rules_reads_behaviour(prefix, suffix, add_bos, add_eos):
    def encode(text, add_special_tokens):
        ids = [ord(c) for c in text]
        return prefix + ids + suffix if add_special_tokens else ids

    rules = detect_rules(encode, (BOS, "<bos>"), (EOS, "<eos>"))
    assert (rules.add_bos, rules.add_eos) == (add_bos, add_eos)


def test_detect_rules_without_the_tokens():
    rules = detect_rules(lambda text, add: [5], (None, ""), (None, ""))
    assert not rules.add_bos and not rules.add_eos


def test_end_ids_include_end_of_turn_tokens():
    special = {0: "<pad>", 1: "<eos>", 2: "<bos>", 105: "<start_of_turn>", 106: "<end_of_turn>", 7: "<|eot_id|>"}
    assert end_of_generation_ids([1], special) == [1, 7, 106]


def test_builtin_templates_follow_the_vocabulary():
    assert builtin_chat_template({"<bos>", "<start_of_turn>", "<end_of_turn>"}) == GEMMA
    assert builtin_chat_template({"<|im_start|>", "<|im_end|>"}) == CHATML
    assert builtin_chat_template({"<s>", "</s>"}) == ""


def test_gemma_template_writes_one_bos_and_the_model_role():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text = render_chat(GEMMA, messages, bos_token="<bos>", eos_token="<eos>")
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")


def fingerprint(pieces=("a", "b", "<bos>"), special=(2,), rules=WANTS_BOS, probe=(0, 1)):
    return tokenizer_fingerprint(list(pieces), special, rules, list(probe))


@pytest.mark.parametrize("change", [
    dict(pieces=("a", "c", "<bos>")),  # one piece differs
    dict(pieces=("b", "a", "<bos>")),  # same pieces, other ids
    dict(special=()),  # same pieces, <bos> no longer special
    dict(rules=NO_BOS),  # only the BOS rule differs
    dict(rules=BOTH),  # only the EOS rule differs
    dict(probe=(0, 0, 1)),  # same vocabulary, text splits differently
])
def test_fingerprint_covers_vocabulary_rules_and_text(change):
    assert fingerprint(**change) != fingerprint()
    assert fingerprint() == fingerprint()


def test_model_info_carries_the_rules():
    info = ModelInfo("m", 10, "fp", [1, 106], 512, chat_template=GEMMA, special_tokens=WANTS_BOS)
    message = info.to_pb()
    assert message.special_tokens.add_bos_token and message.special_tokens.bos_token == "<bos>"
    assert ModelInfo.from_pb(pb.InfoResponse.FromString(message.SerializeToString())) == info
    no_tokens = ModelInfo.from_pb(pb.InfoResponse(model_name="m"))
    assert no_tokens.special_tokens == SpecialTokens()


def test_a_tokenizer_says_whether_its_chat_template_is_its_own(tmp_path):
    """A model without a template (a pretrained GGUF such as Gemma 3 270M's) gets a built-in one by its
    vocabulary, and says so: `tandem distill` then warns that its chat answers are no text to learn."""
    from tokenizers import Tokenizer, models

    from common.text_tokenizer import TextTokenizer, TokenizerSpec

    vocab = {"<unk>": 0, "<eos>": 1, "<bos>": 2, "<start_of_turn>": 3, "<end_of_turn>": 4, "a": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.add_special_tokens(["<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"])
    path = tmp_path / "tokenizer.json"
    backend.save(str(path))
    base = dict(bos_token="<bos>", bos_token_id=2, eos_token="<eos>", eos_token_id=1)
    pretrained = TextTokenizer.from_file(path, TokenizerSpec(**base))
    assert pretrained.chat_template == GEMMA and not pretrained.has_own_chat_template
    tuned = TextTokenizer.from_file(path, TokenizerSpec(**base, chat_template=CHATML))
    assert tuned.chat_template == CHATML and tuned.has_own_chat_template
