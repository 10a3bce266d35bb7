"""Which optional dependencies (the package's extras) a command needs, checked before it starts.

`pip install tandem` alone is the thin client: gRPC, protobuf and numpy, enough for the
cloud-only SDK, `tandem generate --mode cloud` and `tandem health`. Everything else names the
extra to install instead of failing on an import deep inside.
"""

from __future__ import annotations

import importlib.util

from common.errors import FailedPrecondition

EXTRAS = {
    "cloud": ("torch", "transformers", "prometheus_client"),  # the target model, its metrics
    # The draft model, `tandem serve` and its metrics, chat templates.
    "edge": ("llama_cpp", "aiohttp", "prometheus_client", "jinja2"),
    "bench": ("matplotlib",),  # `tandem bench` plots
}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_extra(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raises a clear error when `what` cannot run without the `extra` (or just `modules` of it)."""
    missing = [m for m in (modules or EXTRAS[extra]) if not installed(m)]
    if missing:
        raise FailedPrecondition(f"{what} needs the {extra!r} extra (missing: {', '.join(missing)}): "
                                 f"pip install 'tandem[{extra}]'")
