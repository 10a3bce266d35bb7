"""One whole generation through a real EdgeEngine on a fresh connection, for tests."""

from __future__ import annotations

from edge.client import CloudClient
from edge.engine import EdgeEngine, GenerationRequest, Mode
from edge.speculation_config import SpeculationConfig


async def generate_through(address, drafter, request: GenerationRequest, mode: Mode = Mode.HYBRID, **config):
    """The Generation of `request` against the cloud at `address`; config: SpeculationConfig fields."""
    client = CloudClient(address)
    try:
        engine = EdgeEngine(drafter, client, SpeculationConfig(**config))
        await engine.connect()
        return await engine.generate_to_end(request, mode)
    finally:
        await client.close()
