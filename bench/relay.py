"""Link emulator: a TCP relay that adds delay, jitter and a bandwidth cap.

Benchmarks and fault tests put this between edge and cloud so that the real
gRPC traffic experiences a real-looking network link, instead of loopback.
Each direction of each connection is a pipeline: a reader takes bytes off the
socket as soon as they arrive and stamps them with a due time, and a writer
hands them on at that time.  Many chunks can therefore be in flight at once, so
the delay costs latency but not throughput, as on a real long link.

Only the standard library is used, so the relay can run next to either side
without pulling in torch, llama_cpp or grpc.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from common.loop_thread import LoopThread

__all__ = ["LinkConfig", "LinkRelay", "RelayThread", "main"]

CHUNK_BYTES = 64 * 1024
MAX_BUFFERED_BYTES = 4 * 1024 * 1024
"""Per direction and connection; past this the relay stops reading, so a fast
sender feels backpressure the way it would from a full TCP window."""


@dataclass(frozen=True)
class LinkConfig:
    """Properties of the emulated link, applied identically in both directions.

    Jitter is uniform in [-jitter_s, +jitter_s] per chunk, but a chunk is never
    delivered before the previous chunk of its direction: TCP never reorders
    bytes, so emulated jitter must not either.  With a bandwidth cap a chunk of
    n bytes occupies the link for n / bandwidth seconds after the chunks queued
    before it (on any connection), and then still travels one_way_delay_s.
    """

    one_way_delay_s: float = 0.0
    jitter_s: float = 0.0
    bandwidth_bytes_per_s: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.one_way_delay_s < 0 or self.jitter_s < 0:
            raise ValueError("delay and jitter must be >= 0")
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise ValueError("bandwidth must be > 0 (or None for unlimited)")


@dataclass
class _Link:
    """One direction of the emulated link, shared by all connections."""

    name: str  # "up" (client -> target) or "down"
    bytes: int = 0
    free_at: float = 0.0


Tap = Callable[[int, str, bytes], None]
"""tap(connection number, "up" or "down", data): sees every chunk as it is delivered."""


@dataclass(eq=False)
class _Connection:
    """The two sockets of one relayed connection, closed together."""

    writers: list[asyncio.StreamWriter]
    number: int = 0  # 1 for the first connection this relay accepted, and so on
    clean: bool = False
    closed: bool = False

    def close(self, abort: bool) -> None:
        """Close both sides; with abort, send RST so peers see a broken link."""
        if self.closed:
            return
        self.closed = True
        for writer in self.writers:
            if abort:
                try:
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except (OSError, AttributeError):
                    pass
                writer.transport.abort()
            else:
                writer.close()


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LinkRelay:
    """Accepts TCP connections and relays each one to `target` over an emulated link.

    Byte counters count what was delivered, i.e. what crossed the link; bytes
    still in flight when a connection is dropped are not counted. An optional
    `tap` sees the delivered bytes themselves (on the relay's event loop).
    """

    def __init__(self, target: tuple[str, int], config: LinkConfig | None = None,
                 *, host: str = "127.0.0.1", port: int = 0, tap: Tap | None = None) -> None:
        self._target = target
        self._tap = tap
        self._listen = (host, port)
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._conns: dict[_Connection, asyncio.Task] = {}
        self._up = _Link("up")
        self._down = _Link("down")
        self.connections_accepted = 0
        self._connections_ever = 0  # unlike connections_accepted, never reset
        self._rng = random.Random()
        self.set_config(config or LinkConfig())

    @property
    def config(self) -> LinkConfig:
        return self._config

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("relay not started")
        return self._port

    @property
    def bytes_up(self) -> int:
        """Bytes delivered client -> target, over all connections."""
        return self._up.bytes

    @property
    def bytes_down(self) -> int:
        """Bytes delivered target -> client, over all connections."""
        return self._down.bytes

    def set_config(self, config: LinkConfig) -> None:
        """Change the link; applies to chunks read from now on."""
        self._config = config
        if config.seed is not None:
            self._rng = random.Random(config.seed)

    def reset_counters(self) -> None:
        self._up.bytes = self._down.bytes = self.connections_accepted = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, *self._listen)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self.drop_connections()
            await self._server.wait_closed()

    async def drop_connections(self) -> None:
        """Reset every live connection, as a broken link would; keep listening."""
        tasks = list(self._conns.values())
        for conn in list(self._conns):
            conn.close(abort=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        self._connections_ever += 1
        conn = _Connection([client_writer], number=self._connections_ever)
        self._conns[conn] = asyncio.current_task()
        try:
            await self._relay(conn, client_reader)
        except asyncio.CancelledError:
            pass
        finally:
            conn.close(abort=not conn.clean)
            self._conns.pop(conn, None)

    async def _relay(self, conn: _Connection, client_reader: asyncio.StreamReader) -> None:
        """Run both directions; an error on either resets both sides (clean stays False)."""
        try:
            target_reader, target_writer = await asyncio.open_connection(*self._target)
        except OSError:
            return
        conn.writers.append(target_writer)
        client_writer = conn.writers[0]
        try:
            for writer in conn.writers:
                _set_nodelay(writer)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(client_reader, target_writer, self._up, conn.number))
                group.create_task(self._pipe(target_reader, client_writer, self._down, conn.number))
            conn.clean = True
        except* OSError:
            pass

    def _due_time(self, link: _Link, nbytes: int) -> float:
        cfg = self._config
        now = asyncio.get_running_loop().time()
        departs = now
        if cfg.bandwidth_bytes_per_s and nbytes:
            link.free_at = max(link.free_at, now) + nbytes / cfg.bandwidth_bytes_per_s
            departs = link.free_at
        jitter = self._rng.uniform(-cfg.jitter_s, cfg.jitter_s) if cfg.jitter_s else 0.0
        return departs + cfg.one_way_delay_s + jitter

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: _Link, number: int) -> None:
        """Relay one direction, ending with EOF (b"") passed on as a half-close."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        room = asyncio.Condition()
        buffered = 0

        async def pump() -> None:
            nonlocal buffered
            last_due = 0.0
            while True:
                async with room:
                    await room.wait_for(lambda: buffered < MAX_BUFFERED_BYTES)
                data = await reader.read(CHUNK_BYTES)
                last_due = max(last_due, self._due_time(link, len(data)))
                buffered += len(data)
                queue.put_nowait((last_due, data))
                if not data:
                    return

        async def deliver() -> None:
            nonlocal buffered
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                link.bytes += len(data)
                if self._tap is not None:
                    self._tap(number, link.name, data)
                writer.write(data)
                await writer.drain()
                async with room:
                    buffered -= len(data)
                    room.notify()

        async with asyncio.TaskGroup() as group:
            group.create_task(pump())
            group.create_task(deliver())


class RelayThread:
    """A LinkRelay on its own event loop in a daemon thread, for synchronous code.

    Usable as a context manager; every method marshals onto the relay's loop
    and waits, so a change has taken effect when the call returns.
    """

    def __init__(self, target: tuple[str, int], config: LinkConfig | None = None,
                 *, host: str = "127.0.0.1", port: int = 0, tap: Tap | None = None) -> None:
        self._relay = LinkRelay(target, config, host=host, port=port, tap=tap)
        self._loop = LoopThread("link-relay")

    def _call(self, fn, *args, timeout: float = 10.0):
        async def call():
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result
        return self._loop.run(call(), timeout)

    def start(self) -> RelayThread:
        self._loop.start()
        self._call(self._relay.start)
        return self

    def stop(self) -> None:
        if not self._loop.alive:
            return
        try:
            self._call(self._relay.stop)
        finally:
            self._loop.stop(join_timeout=10)

    def __enter__(self) -> RelayThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    port = property(lambda self: self._relay.port)
    config = property(lambda self: self._relay.config)
    bytes_up = property(lambda self: self._relay.bytes_up)
    bytes_down = property(lambda self: self._relay.bytes_down)
    connections_accepted = property(lambda self: self._relay.connections_accepted)

    def drop_connections(self) -> None:
        self._call(self._relay.drop_connections)

    def set_config(self, config: LinkConfig) -> None:
        self._call(self._relay.set_config, config)

    def reset_counters(self) -> None:
        self._call(self._relay.reset_counters)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(args: argparse.Namespace) -> None:
    config = LinkConfig(
        one_way_delay_s=args.delay_ms / 1000, jitter_s=args.jitter_ms / 1000,
        bandwidth_bytes_per_s=args.bandwidth_mbps * 1e6 / 8 if args.bandwidth_mbps else None,
        seed=args.seed)
    relay = LinkRelay(args.target, config, host=args.listen[0], port=args.listen[1])
    await relay.start()
    bandwidth = f"{args.bandwidth_mbps} Mbit/s" if args.bandwidth_mbps else "unlimited"
    print(f"relay listening on {args.listen[0]}:{relay.port} -> {args.target[0]}:{args.target[1]}"
          f" (delay {args.delay_ms} ms, jitter {args.jitter_ms} ms, bandwidth {bandwidth})",
          flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await relay.stop()
    print(f"relay stopped: bytes_up={relay.bytes_up} bytes_down={relay.bytes_down}"
          f" connections={relay.connections_accepted}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.relay",
        description="Relay TCP connections to a target through an emulated network link "
                    "(one-way delay, jitter, bandwidth cap; same in both directions).")
    parser.add_argument("--target", type=_address, required=True, metavar="HOST:PORT",
                        help="where to forward connections (e.g. the cloud gRPC server)")
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0), metavar="HOST:PORT",
                        help="address to listen on; port 0 picks a free port (default 127.0.0.1:0)")
    parser.add_argument("--delay-ms", type=float, default=0.0, metavar="D",
                        help="one-way delay in ms; round trip adds 2*D (default 0)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, metavar="J",
                        help="uniform +/-J ms per chunk, never reordering bytes (default 0)")
    parser.add_argument("--bandwidth-mbps", type=float, default=None, metavar="B",
                        help="link capacity in megabits/s per direction (default unlimited)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the jitter")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
