"""Tests for the link emulator (bench.relay), using plain sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.relay import LinkConfig, LinkRelay, RelayThread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 10.0


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(handler):
    """Start a threaded TCP server whose per-connection logic is handler(sock)."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.request.settimeout(TIMEOUT)
            try:
                handler(self.request)
            except OSError:
                pass

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server


def _echo(sock):
    """Echo until EOF, then half-close: so EOF must propagate both ways."""
    while data := sock.recv(65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


@pytest.fixture
def echo_server():
    server = _serve(_echo)
    yield server.server_address
    server.shutdown()
    server.server_close()


def _connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _recv_all(sock):
    buf = bytearray()
    while chunk := sock.recv(65536):
        buf += chunk
    return bytes(buf)


def _exchange(port, payload):
    """Send payload (concurrently with reading), half-close, return all bytes received."""
    with _connect(port) as sock:
        def send():
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send)
        sender.start()
        received = _recv_all(sock)
        sender.join(TIMEOUT)
        return received


def _ping_rtts(port, count):
    with _connect(port) as sock:
        rtts = []
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(b"x")
            assert _recv_exactly(sock, 1) == b"x"
            rtts.append(time.perf_counter() - start)
        return rtts


def test_byte_counts_exact_over_concurrent_connections(echo_server):
    sizes = [1, 1000, 65536 + 7, 300_000, 1_000_000]
    payloads = [os.urandom(n) for n in sizes]
    with RelayThread(echo_server) as relay:
        with ThreadPoolExecutor(len(payloads)) as pool:
            results = list(pool.map(lambda p: _exchange(relay.port, p), payloads))
        assert results == payloads
        assert relay.bytes_up == sum(sizes)
        assert relay.bytes_down == sum(sizes)
        assert relay.connections_accepted == len(sizes)
        assert _exchange(relay.port, b"again") == b"again"
        assert (relay.bytes_up, relay.connections_accepted) == (sum(sizes) + 5, len(sizes) + 1)
        relay.reset_counters()
        assert (relay.bytes_up, relay.bytes_down, relay.connections_accepted) == (0, 0, 0)


def test_one_way_delay_applies_to_round_trip(echo_server):
    delay = 0.02
    direct = statistics.median(_ping_rtts(echo_server[1], 5))
    with RelayThread(echo_server, LinkConfig(one_way_delay_s=delay)) as relay:
        rtts = _ping_rtts(relay.port, 8)
    assert min(rtts) >= 2 * delay - 0.001
    assert statistics.median(rtts) < 2 * delay + 0.03
    assert direct < 0.01


def test_set_config_at_runtime(echo_server):
    with RelayThread(echo_server) as relay:
        assert statistics.median(_ping_rtts(relay.port, 3)) < 0.015
        relay.set_config(LinkConfig(one_way_delay_s=0.03))
        assert relay.config.one_way_delay_s == 0.03
        assert min(_ping_rtts(relay.port, 3)) >= 0.06 - 0.001


def test_delay_does_not_serialize_throughput():
    """Messages sent 5 ms apart over a 50 ms link each take ~50 ms, not 50 ms times the queue."""
    delay, count, gap = 0.05, 40, 0.005
    arrivals = {}
    done = threading.Event()

    def sink(sock):
        buf = b""
        while chunk := sock.recv(65536):
            now = time.perf_counter()
            buf += chunk
            while len(buf) >= 4:
                (index,), buf = struct.unpack("!I", buf[:4]), buf[4:]
                arrivals[index] = now
        done.set()

    server = _serve(sink)
    try:
        with RelayThread(server.server_address, LinkConfig(one_way_delay_s=delay)) as relay:
            sent = {}
            with _connect(relay.port) as sock:
                start = time.perf_counter()
                for i in range(count):
                    sent[i] = time.perf_counter()
                    sock.sendall(struct.pack("!I", i))
                    time.sleep(gap)
                sock.shutdown(socket.SHUT_WR)
                assert done.wait(TIMEOUT)
            total = max(arrivals.values()) - start
    finally:
        server.shutdown()
        server.server_close()
    latencies = [arrivals[i] - sent[i] for i in range(count)]
    assert sorted(arrivals) == list(range(count))
    assert min(latencies) >= delay - 0.001
    assert statistics.median(latencies) < delay + 0.03
    assert max(latencies) < delay + 0.1
    assert total < count * gap * 2 + delay + 0.2


def test_jitter_varies_delay_but_never_reorders(echo_server):
    config = LinkConfig(one_way_delay_s=0.01, jitter_s=0.01, seed=1)
    numbers = range(20_000)
    stream = b"".join(struct.pack("!I", n) for n in numbers)
    with RelayThread(echo_server, config) as relay:
        rtts = _ping_rtts(relay.port, 15)
        with _connect(relay.port) as sock:
            def send():
                for offset in range(0, len(stream), 400):
                    sock.sendall(stream[offset:offset + 400])
                    if offset % 8000 == 0:
                        time.sleep(0.001)
                sock.shutdown(socket.SHUT_WR)
            sender = threading.Thread(target=send)
            sender.start()
            received = _recv_all(sock)
            sender.join(TIMEOUT)
    assert max(rtts) - min(rtts) > 0.004
    assert min(rtts) >= 0.0
    assert received == stream


def test_bandwidth_cap_slows_bulk_transfer():
    # 2 s at the cap: long enough that a relay charging each byte twice (4 s) fails the upper
    # bound, whose 1.5 s margin covers the relay's own work (well under 0.1 s idle) on a loaded
    # 2-core machine. The lower bound holds on any machine: load only slows the relay down.
    rate, size = 500_000, 1_000_000
    finished = {}

    def sink(sock):
        total = 0
        while chunk := sock.recv(65536):
            total += len(chunk)
        finished["t"], finished["bytes"] = time.perf_counter(), total
        sock.sendall(b"k")

    server = _serve(sink)
    try:
        with RelayThread(server.server_address, LinkConfig(bandwidth_bytes_per_s=rate)) as relay:
            with _connect(relay.port) as sock:
                start = time.perf_counter()
                sock.sendall(os.urandom(size))
                sock.shutdown(socket.SHUT_WR)
                assert _recv_all(sock) == b"k"
            assert relay.bytes_up == size
    finally:
        server.shutdown()
        server.server_close()
    elapsed = finished["t"] - start
    assert finished["bytes"] == size
    assert size / rate - 0.05 <= elapsed <= size / rate + 1.5


def test_drop_connections_resets_clients_and_keeps_listening(echo_server):
    with RelayThread(echo_server, LinkConfig(one_way_delay_s=0.005)) as relay:
        with _connect(relay.port) as sock:
            sock.sendall(b"a")
            assert _recv_exactly(sock, 1) == b"a"
            sock.sendall(b"in flight")
            start = time.perf_counter()
            relay.drop_connections()
            try:
                seen = sock.recv(100)
            except ConnectionResetError:
                seen = b""
            assert seen == b""
            assert time.perf_counter() - start < 1.0
        assert _ping_rtts(relay.port, 2)
        assert relay.connections_accepted == 2


def test_half_close_propagates_both_ways():
    """Client-side EOF reaches the server, which still answers; server-side EOF reaches the client."""
    def reply_after_eof(sock):
        sock.sendall(b"hello")
        request = _recv_all(sock)
        sock.sendall(b"got %d" % len(request))
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""

    server = _serve(reply_after_eof)
    try:
        with RelayThread(server.server_address, LinkConfig(one_way_delay_s=0.005)) as relay:
            with _connect(relay.port) as sock:
                assert _recv_exactly(sock, 5) == b"hello"
                sock.sendall(b"x" * 12345)
                sock.shutdown(socket.SHUT_WR)
                assert _recv_all(sock) == b"got 12345"
            assert (relay.bytes_up, relay.bytes_down) == (12345, 5 + 9)
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_target_resets_client():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with RelayThread(("127.0.0.1", dead_port)) as relay:
        # The reset may arrive before the client has finished setting up its socket.
        try:
            with socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT) as sock:
                assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
        assert relay.connections_accepted == 1


def test_async_relay_stop_with_live_connection(echo_server):
    async def scenario():
        relay = LinkRelay(echo_server, LinkConfig(one_way_delay_s=0.002))
        await relay.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"ping"
        await asyncio.wait_for(relay.stop(), TIMEOUT)
        try:
            assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b""
        except ConnectionResetError:
            pass
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", relay.port)

    asyncio.run(scenario())


def test_invalid_config_rejected():
    with pytest.raises(ValueError):
        LinkConfig(one_way_delay_s=-1)
    with pytest.raises(ValueError):
        LinkConfig(bandwidth_bytes_per_s=0)


def test_cli_relays_and_reports_counts(echo_server):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.relay", "--target", f"127.0.0.1:{echo_server[1]}",
         "--delay-ms", "5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("relay listening on 127.0.0.1:"), line
        port = int(line.split()[3].rpartition(":")[2])
        assert _exchange(port, b"hello relay") == b"hello relay"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "bytes_up=11 bytes_down=11 connections=1" in out
    assert "Traceback" not in err
