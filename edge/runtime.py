"""Assembles an EdgeEngine from an EdgeConfig: draft model, cloud connection, embedded cloud."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from edge.config import EdgeConfig
from edge.engine import EdgeEngine, Mode

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_engine(config: EdgeConfig, mode: Mode = Mode.HYBRID) -> AsyncIterator[EdgeEngine]:
    """Loads the draft model; connects to the cloud (starting an embedded one without an address).

    With fallback on, an unreachable cloud does not fail here: the engine answers locally and
    reconnects in the background.
    """
    from edge.client import CloudClient
    from edge.llama_drafter import LlamaDrafter

    embedded = None
    drafter = await asyncio.to_thread(LlamaDrafter, config.draft_model, config.n_ctx, config.threads,
                                      convert_dtype=config.draft_dtype)
    client = None
    try:
        if mode != Mode.EDGE:
            address = config.cloud
            if address is None:
                embedded = await asyncio.to_thread(_start_embedded, config)
                address = embedded.address
            remote = dict(security=config.security()) if config.cloud else {}
            client = CloudClient(address, connect_timeout_s=config.connect_timeout_s, keepalive=config.keepalive(),
                                 response_timeout_s=config.response_timeout_s, **remote)
        engine = EdgeEngine(drafter, client, config.speculation, config.fallback, config.draft_slots)
        try:
            await engine.open()
            yield engine
        finally:
            await engine.close()
    finally:
        if client is not None:
            await client.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        drafter.close()


def _start_embedded(config: EdgeConfig):
    from cloud.config import CloudConfig
    from cloud.embedded import EmbeddedCloud

    log.info("starting an embedded cloud on loopback (pass --cloud HOST:PORT to use a remote one)")
    return EmbeddedCloud(CloudConfig(host="127.0.0.1", port=0, model=config.target_model)).start()
