"""Shared fixtures: the default model in process, and a real server on a free localhost port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from vidlstm.clients import AsyncEncoderClient, EncoderClient, ServerBusyError
from vidlstm.models import InferenceModel, PixelFormat, build_model, default_spec, prepare_frames
from vidlstm.service import RunningServer, ServerSettings, create_server

T = TypeVar("T")
VIDLSTM = [sys.executable, "-m", "vidlstm"]
TOKEN = "test-token"


class ServerThread:
    """A real gRPC server on its own event loop thread, so tests can use blocking clients."""

    def __init__(self, settings: ServerSettings, model: InferenceModel) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.thread.start()
        self.running: RunningServer = self.call(create_server(settings, model))
        self.address = f"127.0.0.1:{self.running.port}"

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    @property
    def live_envs(self) -> int:
        """Envs whose state the server holds, as /metrics reports it (vidlstm_live_envs)."""
        return int(self.running.metrics.registry.get_sample_value("vidlstm_live_envs") or 0)

    @property
    def live_streams(self) -> int:
        """Open streams, as /metrics reports it (vidlstm_live_streams)."""
        return int(self.running.metrics.registry.get_sample_value("vidlstm_live_streams") or 0)

    def stop(self) -> None:
        self.call(self.running.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class ServeProcess:
    """`vidlstm serve` on free ports with JSON logs and metrics, its output collected on a thread."""

    def __init__(self, *flags: str, timeout: float = 120, token: str = TOKEN) -> None:
        """`token` "": no auth (clients such as perf_analyzer cannot send one over gRPC)."""
        self.port, self.metrics_port = free_port(), free_port()
        self.process = subprocess.Popen(
            [*VIDLSTM, "serve", "--port", str(self.port), "--metrics-port", str(self.metrics_port), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "VIDLSTM_THREADS": "1",
                "VIDLSTM_LOG_FORMAT": "json",
                "VIDLSTM_AUTH_TOKENS": token,
            },
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(self.process.stdout or ()), daemon=True
        )
        self._reader.start()
        self.address = f"127.0.0.1:{self.port}"
        try:
            wait_until_serving(self.address, lambda: self.process.poll() is None, timeout)
        except AssertionError:
            self.close()
            raise AssertionError("".join(self.lines[-20:])) from None

    def client(self) -> EncoderClient:
        return EncoderClient(self.address, timeout=60, token=TOKEN)

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value from a real scrape of /metrics (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as page:
            text = page.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def stop(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def serving(model: InferenceModel, **settings: object) -> Iterator[ServerThread]:
    """A server with `settings` on a free port, stopped however the test ends (a failed assertion too)."""
    running = ServerThread(ServerSettings(port=0, **settings), model)  # type: ignore[arg-type]
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def model() -> InferenceModel:
    """The default model (seeded Nature CNN + LSTM), on CPU."""
    return InferenceModel(build_model(default_spec()), __import__("torch").device("cpu"))


@pytest.fixture(scope="session")
def server(model: InferenceModel) -> Iterator[ServerThread]:
    running = ServerThread(ServerSettings(port=0, max_frames_per_call=512), model)
    yield running
    running.stop()


def wait_until_serving(address: str, still_starting: Callable[[], bool], timeout: float = 120) -> None:
    """Polls the health service until the Encoder is SERVING; fails as soon as `still_starting()` is
    False (the process or container died) or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert still_starting(), f"the server at {address} exited while starting"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service="vidlstm.v1.Encoder"), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise AssertionError(f"the server at {address} was not SERVING after {timeout} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_frames(
    rng: np.random.Generator, count: int, height: int = 84, width: int = 84, channels: int = 1
) -> np.ndarray:
    """Frames with structure (smooth gradients + noise), so resizing and JPEG are meaningful."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for _ in range(count):
        base = (
            np.sin(x / rng.uniform(3, 12) + rng.uniform(0, 6)) + np.cos(y / rng.uniform(3, 12))
        ) * 60 + 128
        layers = [base + rng.normal(0, 10, base.shape) for _ in range(channels)]
        frames.append(np.stack(layers, axis=-1))
    return np.clip(frames, 0, 255).astype(np.uint8)


def reference_embeddings(
    model: InferenceModel,
    frames: np.ndarray,
    pixel_format: PixelFormat = PixelFormat.GRAY,
    episode_start: np.ndarray | None = None,
) -> np.ndarray:
    """The plain in-process run: prepare, then one model call over the whole sequence [T, D]."""
    prepared = prepare_frames(frames, pixel_format, model.model.spec.input)
    starts = None if episode_start is None else np.asarray(episode_start)[:, None]
    embeddings, _ = model.encode(prepared[:, None], episode_start=starts)
    return embeddings[:, 0]


# 4096 raw frames at the model's size: about a second of model time on two cores, with no decoding.
BUSY_FRAMES = np.zeros((4096, 84, 84, 1), np.uint8)


async def keep_model_busy(address: str, calls: int) -> None:
    """`calls` long Encode calls from two callers back to back: one on the model, one queued."""

    async def accepted_call(client: AsyncEncoderClient) -> None:
        for _ in range(200):
            try:
                await client.encode(BUSY_FRAMES, pixel_format="GRAY")
                return
            except ServerBusyError:
                await asyncio.sleep(0.05)
        raise AssertionError("the server refused a long call for 10 s")

    async def worker(client: AsyncEncoderClient) -> None:
        for _ in range(calls // 2):
            await accepted_call(client)

    async with AsyncEncoderClient(address, timeout=120) as client:
        await asyncio.gather(worker(client), worker(client))
