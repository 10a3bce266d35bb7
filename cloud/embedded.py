"""A cloud server on loopback, in a background thread of this process.

`tandem generate` without --cloud, the SDK's local mode and the tests use it. Requests still
go through real gRPC on a real port; only the process is shared.
"""

from __future__ import annotations

import logging

from cloud.config import CloudConfig
from cloud.server import RunningServer, load_model, start_server
from common import settings
from common.loop_thread import LoopThread

log = logging.getLogger(__name__)


def start_on_loopback(model: str | None = None) -> EmbeddedCloud:
    """A cloud serving `model` (the default target when None) on a free loopback port.

    What `tandem generate` / `chat` / `serve` and `tandem.Tandem()` start without a cloud address
    (handed to the edge as `EdgeConfig.start_cloud`).
    """
    log.info("starting an embedded cloud on loopback (pass --cloud HOST:PORT to use a remote one)")
    # Its dtype is `tandem cloud`'s --dtype default: $TANDEM_DTYPE, else auto (cloud/dtype.py).
    dtype = settings.env_value("DTYPE", CloudConfig.dtype)
    return EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, model=model, dtype=dtype)).start()


class EmbeddedCloud:
    def __init__(self, config: CloudConfig | None = None, model=None):
        self.config = config or CloudConfig(host="127.0.0.1", port=0)
        self.model = model
        self.running: RunningServer | None = None
        self._loop = LoopThread("tandem-cloud")

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.running.port}"

    @property
    def live_sessions(self) -> int:
        """Sessions (Speculate or Generate calls) the server holds right now; tests check none leak."""
        return len(self.running.service.registry)

    def start(self) -> EmbeddedCloud:
        if self.model is None:
            self.model = load_model(self.config)
        self._loop.start()
        self.running = self._loop.run(start_server(self.config, self.model))
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        if self.running is not None:
            self._loop.run(self.running.stop(grace_s))
            self.running = None
        self._loop.stop()

    def __enter__(self) -> EmbeddedCloud:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
