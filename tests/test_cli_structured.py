"""`tandem generate --json-schema FILE`: the cloud model's constrained answer, in a real process."""

from __future__ import annotations

import json

import pytest
from grammar_reference import SCHEMAS, hf_greedy_constrained
from test_cli import tandem

from common.grammar import GrammarMask, json_schema_grammar, llg_tokenizer


@pytest.mark.parametrize("mode", ["hybrid", "edge"])
def test_generate_json_schema(tmp_path, tiny_cloud, tiny_models, tiny_target, tiny_drafter, mode):
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMAS[8]))
    prompt = "Items:"
    result = tandem("generate", prompt, "--mode", mode, "--max-tokens", "16", "--json", "--json-schema", str(schema_file),
                    "--cloud", tiny_cloud.address, "--draft-model", str(tiny_models.drafts["noisy"]))
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout)["token_ids"]
    grammar = json_schema_grammar(SCHEMAS[8])
    if mode == "hybrid":
        assert ids == hf_greedy_constrained(tiny_target, tiny_drafter("noisy").tokenize(prompt), 16, grammar)
    else:  # the local model alone: not the target's answer, but inside the grammar
        mask = GrammarMask(grammar, llg_tokenizer(tiny_target.text, tiny_target.vocab_size), tiny_target.vocab_size)
        assert len(ids) > 0 and mask.sync(ids)


@pytest.mark.parametrize("content,phrase", [("{not json", "is not JSON"), ('{"type": "objectx"}', "not a usable JSON Schema")])
def test_bad_schema_file_is_one_line_and_exit_2(tmp_path, content, phrase):
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(content)
    result = tandem("generate", "x", "--json-schema", str(schema_file), "--cloud", "127.0.0.1:1")
    assert result.returncode == 2 and "--json-schema" in result.stderr and phrase in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
