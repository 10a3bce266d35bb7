"""The Python SDK with a cloud of its own: `tandem.Tandem()` starts one on loopback.

    from tandem import Tandem
    tandem = Tandem()                                   # an embedded cloud in this process
    tandem = Tandem("cloud.example.com:50051")          # or a remote one (as edge.TandemClient)

Everything else is edge.sdk's (TandemClient, AsyncTandemClient: see there); these classes only
supply the local cloud. Completion and Delta are re-exported, so `from tandem import Tandem,
Completion, Delta` is all an application needs.
"""

from __future__ import annotations

import dataclasses

from edge import sdk
from edge.config import EdgeConfig
from edge.sdk import Completion, Delta

__all__ = ["AsyncTandem", "Completion", "Delta", "Tandem"]


def start_on_loopback(model: str | None):
    from cloud.embedded import start_on_loopback as start  # the cloud's server stack: only when needed

    return start(model)


def _with_local_cloud(cloud: str | None, draft_model: str | None, config: EdgeConfig | None) -> EdgeConfig:
    config = config or EdgeConfig(cloud=cloud, draft_model=draft_model)
    if config.start_cloud is None:
        config = dataclasses.replace(config, start_cloud=start_on_loopback)
    return config


class AsyncTandem(sdk.AsyncTandemClient):
    def __init__(self, cloud: str | None = None, *, draft_model: str | None = None,
                 config: EdgeConfig | None = None, **kwargs):
        super().__init__(config=_with_local_cloud(cloud, draft_model, config), **kwargs)


class Tandem(sdk.TandemClient):
    def __init__(self, cloud: str | None = None, *, draft_model: str | None = None,
                 config: EdgeConfig | None = None, **kwargs):
        super().__init__(config=_with_local_cloud(cloud, draft_model, config), **kwargs)
