"""Stop strings over streamed text: however the text is split, the output is text[:first stop]."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from common.stop import StopScanner

ALPHABET = "ab\n<>é"


def scan(pieces: list[str], stops: list[str]) -> tuple[str, str | None]:
    scanner = StopScanner(stops)
    out = "".join(scanner.push(piece) for piece in pieces) + scanner.flush()
    return out, scanner.hit


@settings(max_examples=1000, deadline=None)
@given(text=st.text(ALPHABET, max_size=40), stops=st.lists(st.text(ALPHABET, min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 40), max_size=8))
def test_any_split_gives_text_up_to_the_first_stop(text, stops, cuts):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    out, hit = scan(pieces, stops)
    if found:
        assert out == text[: min(found)]
        assert hit is not None and text.find(hit) == min(found)
    else:
        assert out == text and hit is None


def test_held_back_text_is_released_once_it_cannot_begin_a_stop():
    scanner = StopScanner(["</end>"])
    assert scanner.push("hello </e") == "hello "
    assert scanner.push("x") == "</ex"
    assert scanner.push("</en") == ""
    assert scanner.push("d>tail") == ""
    assert scanner.hit == "</end>" and scanner.flush() == ""


def test_no_stops_passes_text_through():
    scanner = StopScanner([])
    assert scanner.push("abc") == "abc" and scanner.flush() == "" and scanner.hit is None
