"""Streaming benchmark: vidlstm's EncodeStream against the in-process model and a bare gRPC echo.

All in one run, on this machine: (a) the model in process at batch 1/16/64, (b) a bare gRPC echo
with the same message sizes and stream counts, (c) the vidlstm server with N single-env streams
and one 64-env vector stream, and (d) the same server with batching off (--max-batch-size 1).
Servers run in their own processes; the asyncio clients run here. Prints frames/s, p50/p99 step
latency, and the ratios the targets are stated in.

    python benchmarks/bench_stream.py [--duration 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from vidlstm.clients import AsyncEncoderClient
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.wire import raw_frames

HERE = Path(__file__).resolve().parent
FRAME = (84, 84, 1)  # the default model's input, gray


@dataclass
class Result:
    name: str
    frames_per_s: float
    p50_ms: float
    p99_ms: float

    def row(self) -> str:
        return f"| {self.name} | {self.frames_per_s:,.0f} | {self.p50_ms:.2f} | {self.p99_ms:.2f} |"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def process(args: list[str], port: int) -> Iterator[None]:
    """Starts a server process and waits until its port accepts connections."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{args} did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def run_loops(
    streams: int,
    frames_per_step: int,
    duration: float,
    step_factory: Callable[[], Awaitable[Callable[[], Awaitable[None]]]],
) -> tuple[float, list[float]]:
    """Runs `streams` closed loops for `duration` s after a warm-up; returns frames/s and latencies."""
    latencies: list[float] = []
    steps = 0
    start_at = asyncio.get_running_loop().time() + 1.0  # warm-up second
    stop_at = start_at + duration

    async def loop() -> None:
        nonlocal steps
        step = await step_factory()
        while (now := asyncio.get_running_loop().time()) < stop_at:
            await step()
            if now >= start_at:
                latencies.append(asyncio.get_running_loop().time() - now)
                steps += 1

    await asyncio.gather(*(loop() for _ in range(streams)))
    return steps * frames_per_step / duration, latencies


def summarize(name: str, frames_per_s: float, latencies: list[float]) -> Result:
    ms = np.asarray(latencies) * 1e3
    return Result(name, frames_per_s, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


def in_process(batch: int, duration: float) -> Result:
    """The plain model: one T=1 step of `batch` envs with state in and out, in a loop."""
    import torch

    from vidlstm.models import build_model, default_spec

    model = build_model(default_spec())
    frames = torch.randint(0, 256, (1, batch, 1, 84, 84), dtype=torch.uint8)
    starts = torch.zeros(1, batch, dtype=torch.bool)
    state = model.initial_state(batch)
    latencies = []
    with torch.inference_mode():
        for _ in range(10):
            _, state = model(frames, state, starts)
        stop_at = time.perf_counter() + duration
        while (now := time.perf_counter()) < stop_at:
            _, state = model(frames, state, starts)
            latencies.append(time.perf_counter() - now)
    return summarize(f"in-process, batch {batch}", batch * len(latencies) / sum(latencies), latencies)


def stream_request_size(envs: int) -> tuple[int, int]:
    """Bytes of a real StreamRequest / StreamResponse for one step of `envs` envs."""
    frames = np.zeros((envs, *FRAME), np.uint8)
    request = pb.StreamRequest(frames=raw_frames(frames, "GRAY"), env_ids=range(envs), request_id=1)
    response = pb.StreamResponse(env_ids=range(envs), request_id=1)
    response.embeddings.shape[:] = [envs, 256]
    response.embeddings.data = bytes(envs * 256 * 4)
    return request.ByteSize(), response.ByteSize()


async def echo(port: int, streams: int, envs: int, duration: float) -> Result:
    request_bytes, reply_bytes = stream_request_size(envs)
    payload = reply_bytes.to_bytes(4, "little") + bytes(request_bytes - 4)
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        method = channel.stream_stream(
            "/bench.Echo/Stream", request_serializer=None, response_deserializer=None
        )

        async def factory() -> Callable[[], Awaitable[None]]:
            call = method()

            async def step() -> None:
                await call.write(payload)
                await call.read()

            return step

        fps, latencies = await run_loops(streams, envs, duration, factory)
    return summarize(f"echo, {streams} stream(s) x {envs} env(s)", fps, latencies)


async def vidlstm(port: int, streams: int, envs: int, duration: float, label: str = "") -> Result:
    rng = np.random.default_rng(0)
    shape = FRAME if envs == 1 else (envs, *FRAME)
    frames = rng.integers(0, 256, size=shape, dtype=np.uint8)
    async with AsyncEncoderClient(f"127.0.0.1:{port}") as client:

        async def factory() -> Callable[[], Awaitable[None]]:
            session = client.session(None if envs == 1 else envs, pixel_format="GRAY")

            async def step() -> None:
                await session.step(frames)

            return step

        fps, latencies = await run_loops(streams, envs, duration, factory)
    return summarize(f"vidlstm{label}, {streams} stream(s) x {envs} env(s)", fps, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per scenario")
    parser.add_argument("--quick", action="store_true", help="1 s per scenario (a smoke run)")
    parser.add_argument("--server-args", default="", help="extra `vidlstm serve` flags")
    args = parser.parse_args()
    duration = 1.0 if args.quick else args.duration
    results: dict[str, Result] = {}

    for batch in (1, 16, 64):
        results[f"model{batch}"] = in_process(batch, duration)

    echo_port = free_port()
    with process([sys.executable, str(HERE / "echo_server.py"), str(echo_port)], echo_port):
        for streams, envs in ((1, 1), (16, 1), (64, 1), (1, 64)):
            results[f"echo{streams}x{envs}"] = asyncio.run(echo(echo_port, streams, envs, duration))

    serve = [sys.executable, "-m", "vidlstm", "serve", "--log-level", "WARNING", *args.server_args.split()]
    serve += ["--metrics-port", str(free_port())]  # metrics on, as deployed
    port = free_port()
    with process([*serve, "--port", str(port)], port):
        for streams, envs in ((1, 1), (16, 1), (64, 1), (1, 64)):
            results[f"vidlstm{streams}x{envs}"] = asyncio.run(vidlstm(port, streams, envs, duration))
    port = free_port()
    with process([*serve, "--port", str(port), "--max-batch-size", "1"], port):
        for streams in (16, 64):
            results[f"unbatched{streams}"] = asyncio.run(
                vidlstm(port, streams, 1, duration, label=" unbatched (--max-batch-size 1)")
            )

    print("| scenario | frames/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for result in results.values():
        print(result.row())

    def combined(streams: int) -> float:
        model = results["model64"].frames_per_s
        return 1 / (1 / model + 1 / results[f"echo{streams}x1"].frames_per_s)

    vector = results["vidlstm1x64"].frames_per_s / results["model64"].frames_per_s
    many = results["vidlstm64x1"].frames_per_s / combined(64)
    latency_gap = results["vidlstm1x1"].p50_ms - (results["model1"].p50_ms + results["echo1x1"].p50_ms)
    batching = results["vidlstm64x1"].frames_per_s / results["unbatched64"].frames_per_s
    print()
    print("| ratio | value | target |\n|---|---:|---:|")
    print(f"| 64-env vector stream / in-process batch 64 | {vector:.2f} | >= 0.85 |")
    print(f"| 64 streams / (1 / (1/model64 + 1/echo64)) | {many:.2f} | >= 0.80 |")
    print(f"| 1 stream p50 - (in-process batch 1 + echo p50), ms | {latency_gap:+.2f} | <= +0.50 |")
    print(f"| 64 streams batched / unbatched | {batching:.1f}x | >= 3x |")
    print(
        f"| 16 streams batched / unbatched | "
        f"{results['vidlstm16x1'].frames_per_s / results['unbatched16'].frames_per_s:.1f}x | |"
    )


if __name__ == "__main__":
    main()
