"""Small helpers for configuration objects: CLI flags whose defaults come from TANDEM_* env vars."""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import InvalidArgument


def env(name: str, default):
    """Default for a flag: $TANDEM_<NAME> if set (converted to the default's type), else `default`."""
    raw = os.environ.get(f"TANDEM_{name}")
    if raw is None:
        return default
    return type(default)(raw) if default is not None else raw


def read_config_file(path: str | Path, what: str) -> bytes:
    """A file named by a flag (a certificate, key or token list), or a clear error naming the flag."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
