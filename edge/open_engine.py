"""Assembles an EdgeEngine from an EdgeConfig: draft model, cloud connection, local cloud."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

from common.errors import InvalidArgument
from common.extras import installed
from edge.config import EdgeConfig
from edge.engine import EdgeEngine, Mode


@contextlib.asynccontextmanager
async def open_engine(config: EdgeConfig, mode: Mode = Mode.HYBRID) -> AsyncIterator[EdgeEngine]:
    """Loads the draft model; connects to the cloud (starting a local one without an address).

    With fallback on, an unreachable cloud does not fail here: the engine answers locally and
    reconnects in the background.
    """
    from edge.client import CloudClient

    if mode != Mode.EDGE and config.cloud is None and config.start_cloud is None:
        raise InvalidArgument("no cloud address: pass one (--cloud HOST:PORT, TandemClient(address)), or use "
                              "tandem.Tandem / the tandem command, which start a cloud on loopback")
    embedded = None
    drafter = None
    # Cloud-only answers need no draft model; the thin client (no llama.cpp) has none and lets
    # the cloud tokenize and render text (Generate's prompt_text / return_text).
    if mode != Mode.CLOUD or installed("llama_cpp"):
        from edge.llama_drafter import LlamaDrafter

        drafter = await asyncio.to_thread(LlamaDrafter, config.draft_model, config.n_ctx, config.threads,
                                          convert_dtype=config.draft_dtype)
    client = None
    try:
        if drafter is not None:
            await asyncio.to_thread(lambda: drafter.tokenizer)  # loaded here, not on the event loop later
        if mode != Mode.EDGE:
            address = config.cloud
            if address is None:
                embedded = await asyncio.to_thread(config.start_cloud, config.target_model)
                address = embedded.address
            remote = dict(security=config.security()) if config.cloud else {}
            client = CloudClient(address, connect_timeout_s=config.connect_timeout_s, keepalive=config.keepalive(),
                                 response_timeout_s=config.response_timeout_s, **remote)
        speculation = config.speculation
        if embedded is not None:  # edge and cloud share this machine's cores: don't race the cloud's prefill
            speculation = dataclasses.replace(speculation, defer_draft_prefill=True)
        engine = EdgeEngine(drafter, client, speculation, config.fallback, config.draft_slots,
                            target_tokenizer=config.target_tokenizer_loader(), answer_log=config.answer_log())
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
        if drafter is not None:
            drafter.close()
