"""Soak and fault test, loopback only, bounded in time: valid traffic mixed with misbehaving clients.

For --minutes, asyncio clients here: step valid streams and Encode calls (every answer checked
against the model run in process), open and drop streams mid-way, cancel calls, send garbage,
exceed limits. The server runs in a child process that reports its live streams/envs and RSS.
At the end: every valid request must have had a correct answer, live counts must be back to zero,
and RSS must not have grown beyond --rss-margin after the warm-up minute.

    python benchmarks/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc
import numpy as np

from vidlstm.clients import AsyncEncoderClient, VidlstmError
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc

STEPS = 16
ADDRESS: list[str] = []  # the server under test, set once it listens


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def server_process(connection: Connection) -> None:
    """The server, with a pipe for stats: what a Prometheus scrape would give."""
    from vidlstm.models import load_inference_model
    from vidlstm.service import ServerSettings, create_server

    async def main() -> None:
        settings = ServerSettings(
            port=0, max_streams_per_client=48, stream_idle_timeout_s=5, max_frames_per_call=256
        )
        running = await create_server(settings, load_inference_model(threads=settings.threads))
        connection.send(running.port)
        loop = asyncio.get_running_loop()
        while (message := await loop.run_in_executor(None, connection.recv)) != "stop":
            assert message == "stats"
            connection.send(
                {
                    "live_envs": running.core.live_envs,
                    "live_streams": running.core.live_streams,
                    "rss_mb": rss_mb(),
                    "batches": running.batcher.stats.batches,
                    "dropped_cancelled": running.batcher.stats.dropped_cancelled,
                }
            )
        await running.stop(2)
        connection.send("stopped")

    asyncio.run(main())


@dataclass
class Tally:
    valid: int = 0
    correct: int = 0
    wrong: list[str] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)  # one message per status code

    def error(self, error: VidlstmError | grpc.RpcError) -> None:
        if isinstance(error, VidlstmError):
            code, message = (error.code.name if error.code else "?"), str(error)
        else:
            code, message = error.code().name, str(error.details())
        self.codes[code] += 1
        self.examples.setdefault(code, message[:200])


class References:
    """Fixed frame sequences and their in-process embeddings (step loop with resets)."""

    def __init__(self, count: int = 6) -> None:
        import torch

        from vidlstm.models import InferenceModel, build_model, default_spec

        model = InferenceModel(build_model(default_spec()), torch.device("cpu"))
        self.weights_hash = model.weights_hash
        rng = np.random.default_rng(0)
        self.frames = rng.integers(0, 256, (count, STEPS, 84, 84, 1), dtype=np.uint8)
        self.starts = rng.random((count, STEPS)) < 0.2
        self.starts[:, 0] = True
        self.expected = []
        for frames, starts in zip(self.frames, self.starts, strict=True):
            prepared = frames.transpose(0, 3, 1, 2)[:, None]
            self.expected.append(model.encode(prepared, episode_start=starts[:, None])[0][:, 0])


def check(tally: Tally, got: np.ndarray, expected: np.ndarray, what: str) -> None:
    tally.valid += 1
    if np.allclose(got, expected, atol=1e-4, rtol=0):
        tally.correct += 1
    else:
        tally.wrong.append(f"{what}: max diff {np.abs(got - expected).max():.2e}")


async def valid_stream(
    client: AsyncEncoderClient, refs: References, tally: Tally, rng: random.Random
) -> None:
    picks = rng.sample(range(len(refs.frames)), rng.randint(1, 3))
    async with client.session(len(picks), pixel_format="GRAY") as session:
        for t in range(STEPS):
            got = await session.step(refs.frames[picks, t], refs.starts[picks, t])
            for column, pick in enumerate(picks):
                check(tally, got[column], refs.expected[pick][t], f"stream seq {pick} step {t}")
            await asyncio.sleep(rng.uniform(0, 0.01))


async def valid_encode(
    client: AsyncEncoderClient, refs: References, tally: Tally, rng: random.Random
) -> None:
    pick = rng.randrange(len(refs.frames))
    result = await client.encode(refs.frames[pick], episode_start=refs.starts[pick], pixel_format="GRAY")
    check(tally, result.embeddings, refs.expected[pick], f"encode seq {pick}")


async def drop_stream(client: AsyncEncoderClient, refs: References, tally: Tally, rng: random.Random) -> None:
    tally.faults["stream dropped mid-way"] += 1
    session = client.session(4, pixel_format="GRAY")
    for t in range(rng.randint(1, 5)):
        await session.step(refs.frames[:4, t])
    session._call.cancel()  # an actor that dies without closing its stream


async def cancel_call(client: AsyncEncoderClient, refs: References, tally: Tally, rng: random.Random) -> None:
    tally.faults["call cancelled"] += 1
    frames = np.repeat(refs.frames[0], 8, axis=0)  # 128 frames: still running when cancelled
    task = asyncio.ensure_future(client.encode(frames, pixel_format="GRAY"))
    await asyncio.sleep(rng.uniform(0, 0.02))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def garbage(client: AsyncEncoderClient, refs: References, tally: Tally, rng: random.Random) -> None:
    kind = rng.choice(["bytes", "jpeg", "state", "limit"])
    tally.faults[f"garbage: {kind}"] += 1
    stub = pb_grpc.EncoderStub(client.channel)
    if kind == "bytes":
        frames = pb.Frames(
            raw=pb.RawFrames(shape=[1, 84, 84, 1], pixel_format=pb.GRAY, data=rng.randbytes(99))
        )
    elif kind == "jpeg":
        frames = pb.Frames(encoded=pb.EncodedFrames(images=[b"\xff\xd8\xff" + rng.randbytes(500)]))
    elif kind == "limit":
        frames = pb.Frames(raw=pb.RawFrames(shape=[300, 8, 8, 1], pixel_format=pb.GRAY, data=bytes(300 * 64)))
    else:
        frames = pb.Frames(raw=pb.RawFrames(shape=[1, 84, 84, 1], pixel_format=pb.GRAY, data=bytes(84 * 84)))
    sequence = pb.Sequence(frames=frames)
    if kind == "state":
        sequence.initial_state.CopyFrom(pb.State(weights_hash="0" * 64))
    try:
        await stub.Encode(pb.EncodeRequest(sequences=[sequence]), timeout=30)
        tally.codes["OK (garbage accepted!)"] += 1
    except grpc.RpcError as error:
        tally.error(error)


async def too_many_streams(
    client: AsyncEncoderClient, refs: References, tally: Tally, rng: random.Random
) -> None:
    flood = AsyncEncoderClient(ADDRESS[0], token=f"flood-{rng.random()}")  # a client of its own
    tally.faults["60 streams at once (per-client limit 48)"] += 1
    sessions = [flood.session(pixel_format="GRAY") for _ in range(60)]
    outcomes = await asyncio.gather(*(s.step(refs.frames[0, 0]) for s in sessions), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, VidlstmError):
            tally.error(outcome)
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


Action = Callable[[AsyncEncoderClient, References, Tally, random.Random], Awaitable[None]]
VALID: list[Action] = [valid_stream, valid_stream, valid_encode]
FAULTS: list[Action] = [drop_stream, cancel_call, garbage, garbage, too_many_streams]


async def worker(
    address: str, refs: References, tally: Tally, stop_at: float, seed: int, faulty: bool
) -> None:
    rng = random.Random(seed)
    actions = FAULTS if faulty else VALID
    async with AsyncEncoderClient(address) as client:
        while time.monotonic() < stop_at:
            try:
                await rng.choice(actions)(client, refs, tally, rng)
            except VidlstmError as error:
                tally.error(error)
                if not faulty:
                    tally.wrong.append(f"valid request failed: {error}")


def stats(connection: Connection) -> dict[str, Any]:
    connection.send("stats")
    return connection.recv()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--valid-workers", type=int, default=6)
    parser.add_argument("--fault-workers", type=int, default=4)
    parser.add_argument("--rss-margin", type=float, default=0.10, help="allowed RSS growth after warm-up")
    args = parser.parse_args()
    refs = References()
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=server_process, args=(theirs,), daemon=True)
    server.start()
    address = f"127.0.0.1:{ours.recv()}"
    ADDRESS.append(address)
    tally = Tally()
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    warm = started + min(60.0, args.minutes * 60 / 4)
    samples: list[tuple[float, float]] = []

    async def run() -> None:
        workers = [
            *(worker(address, refs, tally, stop_at, i, False) for i in range(args.valid_workers)),
            *(worker(address, refs, tally, stop_at, 100 + i, True) for i in range(args.fault_workers)),
        ]
        tasks = [asyncio.ensure_future(w) for w in workers]
        while not all(t.done() for t in tasks):
            await asyncio.sleep(5)
            samples.append((time.monotonic() - started, stats(ours)["rss_mb"]))
        await asyncio.gather(*tasks)

    asyncio.run(run())
    time.sleep(7)  # idle streams expire after 5 s; dropped calls settle
    final = stats(ours)
    ours.send("stop")
    ours.recv()
    server.join(timeout=30)
    after_warmup = [rss for t, rss in samples if t >= warm - started] or [final["rss_mb"]]
    growth = (final["rss_mb"] - after_warmup[0]) / after_warmup[0]
    print(f"duration {args.minutes:g} min, {args.valid_workers} valid + {args.fault_workers} faulty workers")
    print(f"valid requests checked: {tally.valid}, correct: {tally.correct}, wrong: {len(tally.wrong)}")
    print(f"faults injected: {sum(tally.faults.values())} " + str(dict(tally.faults)))
    print(f"errors by code: {dict(tally.codes)}")
    for code, example in tally.examples.items():
        print(f"  e.g. {code}: {example}")
    print(f"server batches: {final['batches']}, cancelled jobs dropped: {final['dropped_cancelled']}")
    print(f"live streams / envs at the end: {final['live_streams']} / {final['live_envs']}")
    first = samples[0][1] if samples else 0.0
    print(
        f"server RSS: {first:.0f} MB at start, {after_warmup[0]:.0f} MB after warm-up, "
        f"{final['rss_mb']:.0f} MB at the end ({growth:+.1%})"
    )
    problems = [*tally.wrong[:5]]
    if tally.valid == 0:
        problems.append("no valid request was made")
    if final["live_streams"] or final["live_envs"]:
        problems.append("state left behind")
    if growth > args.rss_margin:
        problems.append(f"RSS grew {growth:.1%} > {args.rss_margin:.0%}")
    if "OK (garbage accepted!)" in tally.codes or "UNKNOWN" in tally.codes or "INTERNAL" in tally.codes:
        problems.append("garbage got OK, UNKNOWN or INTERNAL")
    print("PASS" if not problems else "FAIL: " + "; ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
