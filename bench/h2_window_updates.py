"""Counts HTTP/2 frames of a bare gRPC ping-pong stream: what the transport adds per message.

Why: hybrid decoding exchanges one small message each way per round, and `tandem bench`
shows WINDOW_UPDATE frames as a large share of its bytes. This isolates the cause from
Tandem: a generic bidirectional stream, 40-byte requests answered by 8-byte replies, through
the byte-counting relay, under a few channel options.

    python -m bench.h2_window_updates

Measured with grpcio 1.85: every DATA frame received is answered by two WINDOW_UPDATE frames
(stream and connection level, 13 bytes each), whatever `grpc.http2.lookahead_bytes` says.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from bench.h2frames import FrameTally
from bench.relay import LinkConfig, RelayThread

EXCHANGES = 200
OPTION_SETS = {
    "bdp probe off": [("grpc.http2.bdp_probe", 0)],
    "+ 1 MiB lookahead": [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1 << 20)],
    "+ 16 MiB lookahead": [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1 << 24)],
}


async def ping_pong(request_iterator, context):
    async for request in request_iterator:
        yield request[:8]


async def measure(options) -> dict[str, int]:
    server = grpc.aio.server(options=options)
    handler = grpc.stream_stream_rpc_method_handler(ping_pong)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("x.X", {"P": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tally = FrameTally()
    try:
        with RelayThread(("127.0.0.1", port), LinkConfig(), tap=tally) as relay:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}", options=options) as channel:
                call = channel.stream_stream("/x.X/P")()
                for _ in range(EXCHANGES):
                    await call.write(b"a" * 40)
                    await call.read()
                await call.done_writing()
                while await call.read() != grpc.aio.EOF:
                    pass
            await asyncio.sleep(0.2)
    finally:
        await server.stop(0)
    return tally.snapshot()["frames"]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    print(f"{EXCHANGES} exchanges; frames by direction and type")
    for name, options in OPTION_SETS.items():
        frames = asyncio.run(measure(options))
        data = frames.get("up DATA", 0) + frames.get("down DATA", 0)
        updates = frames.get("up WINDOW_UPDATE", 0) + frames.get("down WINDOW_UPDATE", 0)
        print(f"{name:>20}: DATA {data:4d}  WINDOW_UPDATE {updates:4d}  ({updates / max(data, 1):.2f} per DATA frame)")


if __name__ == "__main__":
    main()
