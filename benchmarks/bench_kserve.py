"""KServe v2 benchmark: Triton's protocol against the v1 API on the same server, like with like.

All in one run, on this machine: the in-process model at batch 1/16/64; then one `vidlstm serve`
process driven by Python asyncio closed loops at concurrency 1, 16 and 64, one frame per request
per sequence, unary against unary and streaming against streaming: (a) v1 `Encode` over grpc.aio,
the state passed back with each call; (b) KServe `ModelInfer` with tritonclient.grpc.aio, one
sequence id per loop, the state held by the server; (c) v1 `EncodeStream`, one stream per sequence;
(d) KServe `ModelStreamInfer` with tritonclient.grpc.aio, one stream per loop. Then perf_analyzer
(C++, what a Triton user would run) with --sequence-length, with and without --streaming. Prints
frames/s, p50/p99 latency and the ratios the target is stated in (KServe >= 0.8 of v1 at the same
concurrency).

    python benchmarks/bench_kserve.py [--duration 5] [--quick] [--no-perf-analyzer]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as tga
from bench_stream import Result, free_port, in_process, process, run_loops, summarize, vidlstm
from tritonclient.grpc import InferInput

from vidlstm.clients import AsyncEncoderClient, RecurrentState

MODEL, INPUT, OUTPUT = "vidlstm", "FRAMES", "EMBEDDING"
CONCURRENCY = (1, 16, 64)
PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"


def _frame_input() -> InferInput:
    frame = np.random.default_rng(0).integers(0, 256, (1, 84, 84, 1), dtype=np.uint8)
    tensor = InferInput(INPUT, list(frame.shape), "UINT8")
    tensor.set_data_from_numpy(frame)
    return tensor


async def v1_unary(port: int, sequences: int, duration: float) -> Result:
    """The v1 API's unary way to step a sequence: `Encode` with the state passed back each call."""
    frame = np.random.default_rng(0).integers(0, 256, (1, 84, 84, 1), dtype=np.uint8)
    async with AsyncEncoderClient(f"127.0.0.1:{port}") as client:

        async def factory() -> Callable[[], Awaitable[None]]:
            state: RecurrentState | None = None

            async def step() -> None:
                nonlocal state
                state = (await client.encode(frame, state=state, pixel_format="GRAY")).state

            return step

        fps, latencies = await run_loops(sequences, 1, duration, factory)
    return summarize(f"v1 Encode (state in and out), {sequences} sequence(s)", fps, latencies)


async def kserve_unary(port: int, sequences: int, duration: float) -> Result:
    async with tga.InferenceServerClient(f"127.0.0.1:{port}") as client:
        ids = iter(range(1, sequences + 1))

        async def factory() -> Callable[[], Awaitable[None]]:
            sequence_id, frames, started = next(ids), _frame_input(), False

            async def step() -> None:
                nonlocal started
                await client.infer(MODEL, [frames], sequence_id=sequence_id, sequence_start=not started)
                started = True

            return step

        fps, latencies = await run_loops(sequences, 1, duration, factory)
    return summarize(f"KServe ModelInfer, {sequences} sequence(s)", fps, latencies)


async def kserve_streaming(port: int, sequences: int, duration: float) -> Result:
    async with tga.InferenceServerClient(f"127.0.0.1:{port}") as client:
        ids = iter(range(1, sequences + 1))
        streams: list[asyncio.Queue[dict[str, object] | None]] = []

        async def factory() -> Callable[[], Awaitable[None]]:
            sequence_id, frames = next(ids), _frame_input()
            requests: asyncio.Queue[dict[str, object] | None] = asyncio.Queue()
            streams.append(requests)

            async def feed() -> AsyncIterator[dict[str, object]]:
                while (request := await requests.get()) is not None:
                    yield request

            responses = client.stream_infer(feed()).__aiter__()
            started = False

            async def step() -> None:
                nonlocal started
                request = {"model_name": MODEL, "inputs": [frames], "sequence_id": sequence_id}
                await requests.put({**request, "sequence_start": not started})
                started = True
                _, error = await anext(responses)
                assert error is None, error

            return step

        fps, latencies = await run_loops(sequences, 1, duration, factory)
        for requests in streams:
            await requests.put(None)
    return summarize(f"KServe ModelStreamInfer, {sequences} stream(s)", fps, latencies)


def perf_analyzer(port: int, concurrency: int, streaming: bool, duration: float) -> Result | None:
    """perf_analyzer's own figures (throughput, p50/p99 client latency), or None where it cannot run."""
    library = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    cudart = library / "site-packages" / "nvidia" / "cuda_runtime" / "lib"
    command = [
        str(PERF_ANALYZER),
        *("-m", MODEL, "-u", f"127.0.0.1:{port}", "-i", "grpc", "--sequence-length", "100"),
        *("--concurrency-range", str(concurrency), "--measurement-interval", str(int(duration * 1000))),
        *("--percentile", "99", *(["--streaming"] if streaming else [])),
    ]
    env = {**os.environ, "LD_LIBRARY_PATH": str(cudart)}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    output = run.stdout + run.stderr
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", output)
    p50 = re.search(r"p50 latency: (\d+) usec", output)
    p99 = re.search(r"p99 latency: (\d+) usec", output)
    if run.returncode or not (throughput and p50 and p99):
        print(f"perf_analyzer failed:\n{output[-2000:]}", file=sys.stderr)
        return None
    name = f"perf_analyzer{' --streaming' if streaming else ''}, concurrency {concurrency}"
    return Result(name, float(throughput[1]), int(p50[1]) / 1e3, int(p99[1]) / 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per scenario")
    parser.add_argument("--quick", action="store_true", help="1 s per scenario (a smoke run)")
    parser.add_argument("--no-perf-analyzer", action="store_true", help="skip the perf_analyzer rows")
    parser.add_argument("--server-args", default="", help="extra `vidlstm serve` flags")
    args = parser.parse_args()
    duration = 1.0 if args.quick else args.duration
    results: dict[str, Result] = {f"model{n}": in_process(n, duration) for n in CONCURRENCY}

    serve = [sys.executable, "-m", "vidlstm", "serve", "--log-level", "WARNING", *args.server_args.split()]
    port = free_port()
    with process([*serve, "--metrics-port", str(free_port()), "--port", str(port)], port):
        for n in CONCURRENCY:
            results[f"v1-unary-{n}"] = asyncio.run(v1_unary(port, n, duration))
            results[f"unary-{n}"] = asyncio.run(kserve_unary(port, n, duration))
            results[f"v1-{n}"] = asyncio.run(vidlstm(port, n, 1, duration, label=" v1 EncodeStream"))
            results[f"streaming-{n}"] = asyncio.run(kserve_streaming(port, n, duration))
        if not args.no_perf_analyzer:
            for streaming in (False, True):
                for n in CONCURRENCY:
                    measured = perf_analyzer(port, n, streaming, max(duration, 2.0))
                    if measured is not None:
                        results[f"pa-{streaming}-{n}"] = measured

    print("| scenario | frames/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for result in results.values():
        print(result.row())
    print(
        "\n| concurrency | ModelInfer / v1 Encode | ModelStreamInfer / v1 EncodeStream "
        "| ModelInfer / v1 EncodeStream | target |\n|---:|---:|---:|---:|---:|"
    )
    for n in CONCURRENCY:
        unary, streaming = results[f"unary-{n}"].frames_per_s, results[f"streaming-{n}"].frames_per_s
        v1_unary_fps, v1_stream = results[f"v1-unary-{n}"].frames_per_s, results[f"v1-{n}"].frames_per_s
        print(
            f"| {n} | {unary / v1_unary_fps:.2f} | {streaming / v1_stream:.2f} | {unary / v1_stream:.2f} "
            "| >= 0.8 |"
        )


if __name__ == "__main__":
    main()
