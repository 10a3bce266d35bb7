"""How a model family wraps a prompt in special tokens, and which tokens end a generation.

Most families want a BOS token before every prompt (Llama 2 and 3, Mistral, Gemma); some want
none (SmolLM2); a few append EOS. A model fed a prompt without the BOS it was trained with
degenerates (Gemma 3 270M loops on "France. France. France."), so the target's rules, not the
draft engine's defaults, decide how text becomes ids. These are pure functions of ids: the
tokenizers that produce the ids live in cloud/ and edge/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

END_OF_TURN_TOKENS = frozenset({
    "<end_of_turn>",  # Gemma
    "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",  # Llama 3
    "<|im_end|>", "<|endoftext|>",  # ChatML families (SmolLM, Qwen)
    "<|end|>", "<|return|>", "<|call|>",  # Phi 3, gpt-oss
    "<EOT>", "<end_of_utterance>", "<|END_OF_TURN_TOKEN|>",
})
"""Special tokens that end a turn besides the declared EOS (as llama.cpp's end-of-generation
set has them): an instruct model writes them at the end of its answer, and nothing it writes
after one belongs to the answer."""


@dataclass(frozen=True)
class SpecialTokens:
    """A tokenizer's BOS/EOS rules: which ids its default encoding adds, and their texts
    (chat templates write `bos_token` and `eos_token` as text)."""

    bos_token_id: int | None = None
    bos_token: str = ""
    add_bos: bool = False
    eos_token_id: int | None = None
    eos_token: str = ""
    add_eos: bool = False

    def __post_init__(self):
        if self.add_bos and self.bos_token_id is None:
            raise ValueError("add_bos without a bos_token_id")
        if self.add_eos and self.eos_token_id is None:
            raise ValueError("add_eos without an eos_token_id")

    def wrap(self, ids: Sequence[int]) -> list[int]:
        """A raw prompt's ids as the tokenizer's default encoding gives them: BOS and EOS added
        per the rules (`ids` are the text's tokens alone)."""
        return [*self._bos(), *ids, *([self.eos_token_id] if self.add_eos else [])]

    def wrap_chat(self, ids: Sequence[int]) -> list[int]:
        """A rendered chat prompt's ids: one BOS where the model wants one, never a second when
        the template already wrote it, and no EOS (the prompt ends where the reply begins)."""
        ids = list(ids)
        if self.add_bos and ids[:1] == [self.bos_token_id]:
            return ids
        return [*self._bos(), *ids]

    def _bos(self) -> list[int]:
        return [self.bos_token_id] if self.add_bos else []


def detect_rules(encode: Callable[[str, bool], Sequence[int]], bos: tuple[int | None, str],
                 eos: tuple[int | None, str]) -> SpecialTokens:
    """The rules a tokenizer follows, read off its behaviour rather than its flags (a flag
    and the post-processor that really adds the token can disagree after a save and reload).

    encode(text, add_special_tokens) -> ids; bos and eos are (id, text) of the tokenizer's tokens.
    """
    probe = "Hello world"
    plain, full = list(encode(probe, False)), list(encode(probe, True))
    add_bos = bos[0] is not None and full[:1] == [bos[0]] and plain[:1] != [bos[0]]
    add_eos = eos[0] is not None and full[-1:] == [eos[0]] and plain[-1:] != [eos[0]]
    return SpecialTokens(bos[0], bos[1], add_bos, eos[0], eos[1], add_eos)


def end_of_generation_ids(eos_ids: Iterable[int], special_tokens: Mapping[int, str]) -> list[int]:
    """The declared EOS ids plus every special token that ends a turn (END_OF_TURN_TOKENS)."""
    ends = set(eos_ids) | {i for i, text in special_tokens.items() if text in END_OF_TURN_TOKENS}
    return sorted(ends)


def id_list(value) -> list[int]:
    """An `eos_token_id` as configs write it (None, an id, or a list of ids) as a list."""
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]
