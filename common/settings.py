"""Small helpers for configuration objects: CLI flags whose defaults come from TANDEM_* env vars."""

from __future__ import annotations

import os


def env(name: str, default):
    """Default for a flag: $TANDEM_<NAME> if set (converted to the default's type), else `default`."""
    raw = os.environ.get(f"TANDEM_{name}")
    if raw is None:
        return default
    return type(default)(raw) if default is not None else raw
