"""The student as a draft: HF directory -> GGUF (the project's converter) -> llama.cpp quantization.

Every file is written under a temporary name and renamed when whole, so an interrupted export
leaves no file that looks finished.
"""

from __future__ import annotations

import os
from pathlib import Path

from distill.config import WEIGHT_TYPES
from edge.convert import convert
from edge.llama_drafter import quantize, tokenize_with_vocab



def export_gguf(student_dir: Path, out: Path, weight_type: str) -> Path:
    """Writes `out`, a GGUF of the saved student with `weight_type` weights."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"unknown weight type {weight_type!r}; choose one of {', '.join(WEIGHT_TYPES)}")
    partial = out.with_name(out.name + ".partial")
    unquantized = out.with_name(out.name + ".f16.partial")
    try:
        if weight_type in ("f32", "f16"):
            convert(student_dir, partial, tokenize_gguf=tokenize_with_vocab, dtype=weight_type)
        else:
            convert(student_dir, unquantized, tokenize_gguf=tokenize_with_vocab, dtype="f16")
            quantize(unquantized, partial, weight_type)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
        unquantized.unlink(missing_ok=True)
    return out
