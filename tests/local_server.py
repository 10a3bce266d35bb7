"""`tandem serve`'s HTTP server on a free loopback port, on its own event-loop thread.

The tests talk to it with the official (synchronous) openai client and plain HTTP, exactly as a
desktop app would; the engine inside is built from the tiny test models so exactness can be
checked against the target.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from common.loop_thread import LoopThread
from edge.client import CloudClient
from edge.engine import EdgeEngine
from edge.fallback import FallbackConfig
from edge.serve import OpenAIServer, ServeConfig
from edge.sdk import AsyncTandemClient
from edge.speculation_config import SpeculationConfig


class LocalServer:
    def __init__(self, drafter, cloud_address: str | None, fallback: FallbackConfig | None = None,
                 speculation: SpeculationConfig | None = None, connect_timeout_s: float = 10.0,
                 config: ServeConfig | None = None, draft_slots: int = 1):
        self.drafter = drafter
        self.cloud_address = cloud_address
        self.fallback = fallback
        self.speculation = speculation or SpeculationConfig(draft_tokens=4)
        self.connect_timeout_s = connect_timeout_s
        self.config = config or ServeConfig(port=0)
        self.draft_slots = draft_slots
        self.engine: EdgeEngine | None = None
        self.server: OpenAIServer | None = None
        self._loop = LoopThread("tandem-serve-test")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/v1"

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/"

    def run(self, coroutine, timeout: float = 60.0):
        return self._loop.run(coroutine, timeout)

    def start(self) -> LocalServer:
        self._loop.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        client = CloudClient(self.cloud_address, connect_timeout_s=self.connect_timeout_s) \
            if self.cloud_address else None
        self.engine = EdgeEngine(self.drafter, client, self.speculation, self.fallback, self.draft_slots)
        await self.engine.open()
        self.server = OpenAIServer(AsyncTandemClient.from_engine(self.engine), self.config)
        await self.server.start()

    def stop(self) -> None:
        self.run(self._stop())
        self._loop.stop()

    async def _stop(self) -> None:
        await self.server.stop()
        await self.engine.close()
        if self.engine.client is not None:
            await self.engine.client.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             ) -> tuple[int, dict, dict | bytes]:
        """(status, headers, body: JSON when it is) of a plain HTTP request to the server root + path.

        With an API key configured, requests carry it unless `headers` says otherwise.
        """
        url = f"http://127.0.0.1:{self.server.port}{path}"
        sent = {"Content-Type": "application/json"}
        if self.config.api_key:
            sent["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(url, data=body, method=method, headers={**sent, **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), _body(response)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), _body(error)

    def health(self) -> dict:
        status, _, body = self.http("GET", "/health")
        assert status == 200, body
        return body

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """{(sample name, sorted labels): value} from GET /metrics (Prometheus text format)."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.server.port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def wait_for(self, condition, timeout: float = 30.0, what: str = "condition") -> dict:
        """Polls /health until condition(health) holds; returns that health."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if condition(health):
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; last health: {health}")
            time.sleep(0.05)


def _body(response) -> dict | bytes:
    data = response.read()
    return json.loads(data) if response.headers.get("Content-Type", "").startswith("application/json") else data
