"""The light clients over real channels: the sync and asyncio twins, gRPC's retry policy for refused
unary calls (never for a stream), and keepalive pings under the server's ping enforcement."""

# ruff: noqa: N802 (a servicer's methods are named after the .proto's RPCs)

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ServerThread, random_frames
from videos import write_video

from vidlstm.clients import (
    AsyncEncoderClient,
    AsyncSession,
    EncoderClient,
    RetryPolicy,
    ServerBusyError,
    ServerUnavailableError,
    Session,
    VideoPart,
)
from vidlstm.models import InferenceModel
from vidlstm.service import ServerSettings
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.wire import tensor_to_proto

FAST_RETRY = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)
REFUSALS = {
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ServerBusyError,
}
# 8 RGB frames of 210x160: 806 KB, over gRPC's default retry buffer of 256 KiB.
BIG_FRAMES = np.zeros((8, 210, 160, 3), np.uint8)
KEEPALIVE_S = 1.0  # the clients' 30 s scaled down to gRPC's floor (at most one ping a second)
IDLE_S = 6.5  # six pings without data: a server that allows fewer closes the connection on the fifth
Context = grpc.aio.ServicerContext[Any, Any]


class RefusingEncoder(pb_grpc.EncoderServicer):
    """Refuses the first `refusals` calls of each method with `code`, then answers; counts every call
    and every stream message it sees. Streams are always refused."""

    def __init__(self, refusals: int, code: grpc.StatusCode) -> None:
        self.refusals, self.code = refusals, code
        self.calls: Counter[str] = Counter()

    async def _count(self, method: str, context: Context) -> None:
        self.calls[method] += 1
        if self.calls[method] <= self.refusals:
            await context.abort(self.code, f"{method} refused, attempt {self.calls[method]}")

    async def GetModelInfo(self, request: Any, context: Context) -> pb.ModelInfo:
        await self._count("GetModelInfo", context)
        return pb.ModelInfo(name="refusing", embedding_size=2)

    async def Encode(self, request: pb.EncodeRequest, context: Context) -> Any:
        await self._count("Encode", context)
        frames = request.sequences[0].frames.raw.shape[0]
        embeddings = tensor_to_proto(np.ones((frames, 2), np.float32))
        return pb.EncodeResponse(results=[pb.SequenceResult(embeddings=embeddings)])

    async def EncodeStream(self, requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async for _ in requests:
            self.calls["stream message"] += 1
            await self._refuse_stream("EncodeStream", context)
        yield pb.StreamResponse()  # unreachable: makes this a streaming handler

    async def EncodeVideo(self, requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        await anext(requests)
        await self._refuse_stream("EncodeVideo", context)
        yield pb.VideoResponse()  # unreachable: makes this a streaming handler

    async def _refuse_stream(self, method: str, context: Context) -> None:
        self.calls[method] += 1
        await context.abort(self.code, f"{method} refused")


class RefusingServer:
    """A real grpc.aio server with a `RefusingEncoder`, on its own event loop thread."""

    def __init__(self, refusals: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.servicer = RefusingEncoder(refusals, code)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, port = self._call(self._start())
        self.address = f"127.0.0.1:{port}"

    async def _start(self) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        pb_grpc.add_EncoderServicer_to_server(self.servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def stop(self) -> None:
        self._call(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def refusing_server(refusals: int, code: grpc.StatusCode) -> Iterator[RefusingServer]:
    running = RefusingServer(refusals, code)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(params=list(REFUSALS), ids=lambda code: code.name)
def refuses_three_times(request: pytest.FixtureRequest) -> Iterator[RefusingServer]:
    yield from refusing_server(3, request.param)


@pytest.fixture
def refuses_always() -> Iterator[RefusingServer]:
    yield from refusing_server(1000, grpc.StatusCode.UNAVAILABLE)


def test_sync_and_async_clients_are_twins() -> None:
    for sync, asynchronous in ((EncoderClient, AsyncEncoderClient), (Session, AsyncSession)):
        assert _public_signatures(sync) == _public_signatures(asynchronous)


def _public_signatures(cls: type) -> dict[str, list[inspect.Parameter]]:
    """Public methods -> their parameters (return types differ by design: iterators, sessions)."""
    return {
        name: list(inspect.signature(member).parameters.values())
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") or name == "__init__"
    }


def test_async_encode_video_equals_the_sync_one(server: ServerThread, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4", frames=12)

    async def collect() -> list[VideoPart]:
        async with AsyncEncoderClient(server.address) as client:
            return [part async for part in client.encode_video(video, return_state=True)]

    with EncoderClient(server.address) as client:
        expected = list(client.encode_video(video, return_state=True))
    got = asyncio.run(collect())
    assert len(got) == len(expected) >= 2
    for part, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(part.embeddings, reference.embeddings, atol=1e-6)
        np.testing.assert_array_equal(part.frame_indices, reference.frame_indices)
    assert got[-1].summary == expected[-1].summary
    assert got[-1].final_state is not None


def test_refused_unary_calls_are_retried_by_grpc(refuses_three_times: RefusingServer) -> None:
    with EncoderClient(refuses_three_times.address, retry=FAST_RETRY) as client:
        assert client.info().name == "refusing"
        assert client.encode(BIG_FRAMES).embeddings.shape == (8, 2)
    assert refuses_three_times.servicer.calls == {"GetModelInfo": 4, "Encode": 4}


def test_async_client_retries_too(refuses_three_times: RefusingServer) -> None:
    async def calls() -> tuple[str, tuple[int, ...]]:
        async with AsyncEncoderClient(refuses_three_times.address, retry=FAST_RETRY) as client:
            return (await client.info()).name, (await client.encode(BIG_FRAMES)).embeddings.shape

    assert asyncio.run(calls()) == ("refusing", (8, 2))
    assert refuses_three_times.servicer.calls == {"GetModelInfo": 4, "Encode": 4}


def test_retries_are_bounded(refuses_always: RefusingServer) -> None:
    with (
        EncoderClient(refuses_always.address, retry=FAST_RETRY) as client,
        pytest.raises(ServerUnavailableError, match="attempt 5"),
    ):
        client.encode(BIG_FRAMES)
    assert refuses_always.servicer.calls == {"Encode": FAST_RETRY.max_attempts}


def test_without_a_retry_policy_a_refusal_raises_at_once(refuses_three_times: RefusingServer) -> None:
    code = refuses_three_times.servicer.code
    with EncoderClient(refuses_three_times.address, retry=None) as client, pytest.raises(REFUSALS[code]):
        client.encode(BIG_FRAMES)
    assert refuses_three_times.servicer.calls == {"Encode": 1}


def test_stream_steps_and_videos_are_never_replayed(refuses_always: RefusingServer, tmp_path: Path) -> None:
    upload = tmp_path / "clip.bin"
    upload.write_bytes(b"not really a video")
    with EncoderClient(refuses_always.address, retry=FAST_RETRY) as client:
        with client.session() as session, pytest.raises(ServerUnavailableError):
            session.step(BIG_FRAMES[0])
        with pytest.raises(ServerUnavailableError):
            list(client.encode_video(upload))
    assert refuses_always.servicer.calls == {"EncodeStream": 1, "stream message": 1, "EncodeVideo": 1}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": 9}, r"max_attempts must be 2 to 5 \(gRPC's cap\), got 9"),
        ({"initial_backoff_s": 2.0, "max_backoff_s": 1.0}, "got 2.0 and 1.0"),
        ({"retryable_codes": ("UNAVALIABLE",)}, r"got \('UNAVALIABLE',\)"),
    ],
)
def test_a_bad_retry_policy_names_the_value(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**fields)


@pytest.mark.parametrize("keepalive_s", [0, -1, float("nan"), float("inf")])
def test_a_bad_keepalive_names_the_value(keepalive_s: float) -> None:
    with pytest.raises(
        ValueError, match=f"keepalive_s must be > 0 seconds, or None for no pings, got {keepalive_s}"
    ):
        EncoderClient("localhost:50051", keepalive_s=keepalive_s)


def test_keepalive_pings_keep_an_idle_stream_open(model: InferenceModel, rng: np.random.Generator) -> None:
    """Pings within the server's allowance keep an idle stream usable; the same pings against a server
    that allows fewer get the connection closed, so they are really sent and really enforced."""
    allowing = ServerThread(ServerSettings(port=0, keepalive_min_ping_interval_s=KEEPALIVE_S / 3), model)
    strict = ServerThread(ServerSettings(port=0, keepalive_min_ping_interval_s=60), model)
    frames = random_frames(rng, 2)
    try:
        with ThreadPoolExecutor(2) as pool:  # both idle at once: the test waits IDLE_S only once
            kept, closed = (pool.submit(_hold_idle_stream, s.address, frames) for s in (allowing, strict))
            assert kept.result().shape == (256,)
            with pytest.raises(ServerUnavailableError, match="Too many pings"):
                closed.result()
    finally:
        allowing.stop()
        strict.stop()


def _hold_idle_stream(address: str, frames: np.ndarray) -> np.ndarray:
    """Steps a stream, leaves it idle for IDLE_S seconds while the client pings, steps it again."""
    with (
        EncoderClient(address, keepalive_s=KEEPALIVE_S) as client,
        client.session(pixel_format="GRAY") as session,
    ):
        session.step(frames[0])
        time.sleep(IDLE_S)
        return session.step(frames[1])
