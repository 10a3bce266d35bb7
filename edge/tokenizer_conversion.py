"""The one edge module that imports transformers: a draft's tokenizer, turned into plain files once.

transformers decides how a family tokenizes: its tokenizer classes rebuild the pipeline, add
BOS and EOS by flags, and add the named special tokens the files lack. Rather than re-derive
those rules, the edge lets transformers build a draft's tokenizer once, exactly as the cloud
builds its target's, and saves what it built: the Rust pipeline (tokenizer.json, post-processor
included) and a TokenizerSpec (BOS/EOS tokens, chat template, declared EOS ids). From then on
the edge reads those with `tokenizers` alone (edge/tokenizer.py), so transformers and torch
(~0.9 s and ~250 MB) are imported on a draft's first use only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from common.special_tokens import id_list
from common.text_tokenizer import SPEC_FILE, TextTokenizer, TokenizerSpec

log = logging.getLogger(__name__)


def transformers_tokenizer(source: Path):
    """transformers' tokenizer of a draft: an HF directory, or a GGUF (converted from its keys)."""
    from transformers import AutoTokenizer

    source = Path(source)
    if source.is_dir():
        return AutoTokenizer.from_pretrained(source)
    return AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)


def write_tokenizer_files(source: Path, folder: Path) -> None:
    """Writes tokenizer.json and SPEC_FILE into `folder` for the draft at `source`."""
    log.info("first use of %s's tokenizer: converting it (one-time)...", Path(source).name)
    started = time.monotonic()
    tokenizer = transformers_tokenizer(source)
    template = getattr(tokenizer, "chat_template", None)
    spec = TokenizerSpec(
        bos_token=tokenizer.bos_token, bos_token_id=tokenizer.bos_token_id,
        eos_token=tokenizer.eos_token, eos_token_id=tokenizer.eos_token_id,
        chat_template=template if isinstance(template, str) else None,
        extra_eos_ids=tuple(declared_eos_ids(source)),
        split_special_tokens=bool(getattr(tokenizer, "split_special_tokens", False)),
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"), pretty=False)  # parsed faster, with less memory
    fingerprint = TextTokenizer.from_file(folder / "tokenizer.json", spec).fingerprint  # as every start reads it
    (folder / SPEC_FILE).write_text(dataclasses.replace(spec, fingerprint=fingerprint).to_json())
    log.info("converted the tokenizer in %.1fs", time.monotonic() - started)


def declared_eos_ids(source: Path) -> list[int]:
    """The EOS ids in a model directory's generation_config.json, if it has one."""
    config = Path(source) / "generation_config.json"
    if not config.is_file():
        return []
    return id_list(json.loads(config.read_text()).get("eos_token_id"))
