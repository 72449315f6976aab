"""A bare asyncio gRPC bidirectional echo: the transport cost alone, for comparison.

Answers each request with a fixed-size reply (the size of a real StreamResponse), no parsing.
Run: python benchmarks/echo_server.py PORT REPLY_BYTES
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

METHOD = "/bench.Echo/Stream"


def _identity(data: bytes) -> bytes:
    return data


async def serve(port: int) -> None:
    reply_sizes: dict[int, bytes] = {}

    async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            # The first 4 bytes name the reply size, so one server serves every scenario.
            size = int.from_bytes(request[:4], "little")
            yield reply_sizes.setdefault(size, bytes(size))

    handler = grpc.stream_stream_rpc_method_handler(
        stream, request_deserializer=_identity, response_serializer=_identity
    )
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Stream": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
