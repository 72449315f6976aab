"""Live weights benchmark: PushWeights while 64 single-env streams keep stepping, for the default model
and resnet18 at 224x224 (RGB frames sent at 224x224, so nothing is resized).

Per model, one `vidlstm serve` process, pushing on (an admin token in VIDLSTM_ADMIN_TOKENS). Client
side, all in spawned processes: stream workers (asyncio; the streams split among
`--client-processes`) step one env per stream in a closed loop for the whole run; a pusher process,
the learner's stand-in, pushes weights of another seed (same architecture) with the sync client every
`--interval` s, after `--steady` s of steady state, and the streams go on `--steady` s after the last
push. Every time is `time.perf_counter` (CLOCK_MONOTONIC, one clock for every process here), so
steps and pushes line up across processes.

Measured, after a `--warmup`:
- swap time: the server's `install_ms` per push (from the upload's last byte to the next batch
  running on the new weights) and, client side, the time from the push call returning to the first
  step answer naming the new version (negative: a step came back on the new weights before the
  push's own answer did);
- step latency p50/p99, pooled, of the steps in flight during the 1 s windows centred on each push
  call vs of the steps inside steady 1 s windows (at least 1 s from any push call), and p99 around
  swaps / p99 steady;
- errors: failed steps, a stream's version going backwards, and stale answers (a step sent after a
  push returned, answered on older weights): 0 of each expected.

A model whose steps take longer than a second (resnet18 with 64 streams on a few CPU cores takes
seconds per batch) stretches the timeline: the interval becomes at least 2 and the steady phases
at least 3 step latencies (measured at the end of the warm-up), so that each push lands on another
batch and the steady windows hold whole steps. The tables say what each model ran with.

On a 2-core machine the client shares the cores with the server, so it is kept cheap: one stream
process by default (64 default-model streams need about a third of a core here, see the CPU column,
so a second process could not speed the client up, only add context switches), and the pusher in a
process of its own, so that hashing and serialising an upload never stalls the streams' event loop.
The server's torch threads (`--threads` overrides): 1 for the default model, whose batches are small
and whose gRPC event loop needs the other core; all cores for resnet18, whose batches are nearly
all the work there is.

    python benchmarks/bench_swap.py [--pushes 5] [--interval 2] [--steady 3]
        [--models default,resnet18] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from ctypes import Array, c_double
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from vidlstm.clients import AsyncEncoderClient, EncoderClient, VidlstmError

ADMIN_TOKEN = "bench-swap-admin"
SEED_BASE = 1000  # pushed weights: seeds 1001, 1002, ... (the server starts on seed 0)
RESNET18_224 = (
    '{"name": "resnet18-224", "encoder": {"name": "resnet18"}, "input": {"height": 224, "width": 224, '
    '"grayscale": false, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}'
)
SPAWN = multiprocessing.get_context("spawn")  # no fork: gRPC and torch threads do not survive one
READY_TIMEOUT_S = 300
STOP, PACE = 0, 1  # the shared clock: when the streams stop, the latest step latency (s)
Clock = Array[c_double]


@dataclass(frozen=True)
class Scenario:
    label: str
    spec_json: str | None  # None: the server's default model
    frame: tuple[int, int, int]  # H, W, C as sent
    pixel_format: str
    threads: int  # the server's torch threads unless --threads says otherwise


DEFAULT = Scenario("default (Nature CNN 84x84 gray)", None, (84, 84, 1), "GRAY", threads=1)
RESNET = Scenario("resnet18 224x224 RGB", RESNET18_224, (224, 224, 3), "RGB", threads=os.cpu_count() or 1)
SCENARIOS = {"default": DEFAULT, "resnet18": RESNET}


@dataclass(frozen=True)
class Push:
    start: float
    end: float
    number: int  # the version installed; 0 when the push failed
    install_ms: float
    error: str = ""


@dataclass
class StreamLog:
    """One worker's steps as parallel lists (cheap to append, sent back once at the end)."""

    stream: list[int] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0


# -- server ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(scenario: Scenario, threads: int, folder: Path) -> Iterator[tuple[int, int]]:
    """A server for `scenario` that accepts pushes; yields (port, pid) once it accepts connections.
    Its log (INFO: a line per install) goes to a file, shown if it does not start."""
    port = free_port()
    command = [sys.executable, "-m", "vidlstm", "serve", "--port", str(port), "--threads", str(threads)]
    command += ["--log-level", "INFO", "--metrics-port", str(free_port())]  # metrics on, as deployed
    if scenario.spec_json is not None:
        (spec := folder / "spec.json").write_text(scenario.spec_json)
        command += ["--spec", str(spec)]
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        env = {**os.environ, "VIDLSTM_ADMIN_TOKENS": ADMIN_TOKEN}
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        _wait_for_port(proc, port, log_path)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc: the server is not our Python)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- client processes -------------------------------------------------------------------------------


def stream_worker(address: str, scenario: Scenario, ids: range, clock: Clock, out: Connection) -> None:
    """A spawned process: steps `ids` streams until `clock[STOP]`; says "ready" once each has stepped."""
    out.send(asyncio.run(_step_streams(address, scenario, ids, clock, out)))


async def _step_streams(
    address: str, scenario: Scenario, ids: range, clock: Clock, out: Connection
) -> StreamLog:
    """The streams of one process; its CPU time is counted from "ready" (connections made)."""
    log = StreamLog()
    frame = np.random.default_rng(0).integers(0, 256, scenario.frame, dtype=np.uint8)
    cold = set(ids)
    started, cpu_started = time.perf_counter(), time.process_time()

    def stepped(stream_id: int) -> None:
        nonlocal started, cpu_started
        cold.discard(stream_id)
        if not cold:
            out.send("ready")
            started, cpu_started = time.perf_counter(), time.process_time()

    async with AsyncEncoderClient(address, timeout=300) as client:
        await asyncio.gather(*(_step_one(client, scenario, frame, i, clock, log, stepped) for i in ids))
    log.cpu_s, log.wall_s = time.process_time() - cpu_started, time.perf_counter() - started
    return log


async def _step_one(
    client: AsyncEncoderClient,
    scenario: Scenario,
    frame: np.ndarray,
    stream_id: int,
    clock: Clock,
    log: StreamLog,
    stepped: Callable[[int], None],
) -> None:
    """One env in a closed loop; a failed step is logged and its stream reopened, as an actor would."""
    first = True
    while time.perf_counter() < clock[STOP]:
        try:
            async with client.session(pixel_format=scenario.pixel_format) as session:
                while (sent := time.perf_counter()) < clock[STOP]:
                    await session.step(frame)
                    latency = time.perf_counter() - sent
                    assert session.weights is not None
                    log.stream.append(stream_id)
                    log.sent.append(sent)
                    log.latency.append(latency)
                    log.version.append(session.weights.number)
                    clock[PACE] = latency
                    if first:
                        first = False
                        stepped(stream_id)
        except VidlstmError as error:
            log.errors.append(f"stream {stream_id} at {time.perf_counter():.3f}: {error!r}")


def push_worker(address: str, scenario: Scenario, pushes: int, conn: Connection) -> None:
    """A spawned process, the learner: builds the weights to push (seeds SEED_BASE + 1, ...), says
    "ready", then pushes at each time of the schedule it is sent and answers a `Push` for each."""
    from vidlstm.models import ModelSpec, build_model, checkpoint_bytes, default_spec

    spec = (
        default_spec() if scenario.spec_json is None else ModelSpec.from_dict(json.loads(scenario.spec_json))
    )
    blobs = [
        checkpoint_bytes(build_model(dataclasses.replace(spec, seed=SEED_BASE + k)), learner_step=k)
        for k in range(1, pushes + 1)
    ]
    with EncoderClient(address, token=ADMIN_TOKEN, timeout=300) as client:
        client.info()  # connected before the clock starts
        conn.send("ready")
        schedule: list[float] = conn.recv()
        for step, (at, blob) in enumerate(zip(schedule, blobs, strict=True), start=1):
            time.sleep(max(0.0, at - time.perf_counter()))
            start = time.perf_counter()
            try:
                result = client.push_weights(blob, learner_step=step)
            except VidlstmError as error:
                conn.send(Push(start, time.perf_counter(), 0, math.nan, repr(error)))
                continue
            conn.send(Push(start, time.perf_counter(), result.weights.number, result.install_ms))


# -- one run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    interval: float  # s between pushes
    steady: float  # s of steady state before the first push and after the last


@dataclass(frozen=True)
class Run:
    pushes: list[Push]
    steps: dict[str, np.ndarray]  # stream, sent, received, latency, version: a row per step, by sent
    errors: list[str]
    measured: tuple[float, float]  # from, to (perf_counter)
    timeline: Timeline
    threads: int
    client_cores: float
    server_cores: float


def run(scenario: Scenario, args: argparse.Namespace) -> Run:
    """One server, its stream workers and its pusher, from start to the collected logs."""
    threads = args.threads or scenario.threads
    with tempfile.TemporaryDirectory() as tmp, serve(scenario, threads, Path(tmp)) as (port, pid):
        address = f"127.0.0.1:{port}"
        clock: Clock = SPAWN.RawArray(c_double, [math.inf, 0.0])
        pusher, pusher_end = SPAWN.Pipe()
        children = [SPAWN.Process(target=push_worker, args=(address, scenario, args.pushes, pusher_end))]
        workers, ends = [], [pusher_end]
        for ids in _split(args.streams, args.client_processes):
            mine, theirs = SPAWN.Pipe()
            children.append(SPAWN.Process(target=stream_worker, args=(address, scenario, ids, clock, theirs)))
            workers.append(mine)
            ends.append(theirs)
        for child in children:
            child.start()
        for end in ends:
            end.close()  # only the children hold their ends: one that dies ends our recv() (EOFError)
        try:
            return _drive(pusher, workers, clock, pid, threads, args)
        finally:
            clock[STOP] = 0.0
            for child in children:
                child.join(timeout=60)
                if child.is_alive():
                    child.terminate()


def _split(streams: int, processes: int) -> list[range]:
    bounds = np.linspace(0, streams, processes + 1).astype(int)
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


def _drive(
    pusher: Connection,
    workers: list[Connection],
    clock: Clock,
    pid: int,
    threads: int,
    args: argparse.Namespace,
) -> Run:
    """Warm-up, steady state, the pushes, steady state again; then collects every process's log."""
    for conn in [pusher, *workers]:
        if not conn.poll(READY_TIMEOUT_S) or conn.recv() != "ready":
            raise RuntimeError(f"a client process was not ready within {READY_TIMEOUT_S} s")
    time.sleep(args.warmup)
    pace = clock[PACE]
    timeline = Timeline(max(args.interval, 2 * pace), max(args.steady, 3 * pace))
    measure_from, server_cpu = time.perf_counter(), process_cpu_s(pid)
    first_push = measure_from + timeline.steady + 1.0  # steady windows end 1 s before a push
    pusher.send([first_push + k * timeline.interval for k in range(args.pushes)])
    pushes: list[Push] = [pusher.recv() for _ in range(args.pushes)]
    clock[STOP] = max(p.end for p in pushes) + 1.0 + timeline.steady
    time.sleep(max(0.0, clock[STOP] - time.perf_counter()))
    server_cores = (process_cpu_s(pid) - server_cpu) / (clock[STOP] - measure_from)
    logs: list[StreamLog] = [conn.recv() for conn in workers]
    return Run(
        pushes=pushes,
        steps=_merge(logs),
        errors=[e for log in logs for e in log.errors],
        measured=(measure_from, clock[STOP]),
        timeline=timeline,
        threads=threads,
        client_cores=sum(log.cpu_s / log.wall_s for log in logs),
        server_cores=server_cores,
    )


def _merge(logs: Sequence[StreamLog]) -> dict[str, np.ndarray]:
    sent = np.concatenate([np.asarray(log.sent) for log in logs])
    latency = np.concatenate([np.asarray(log.latency) for log in logs])
    steps = {
        "stream": np.concatenate([np.asarray(log.stream, np.int64) for log in logs]),
        "sent": sent,
        "received": sent + latency,
        "latency": latency,
        "version": np.concatenate([np.asarray(log.version, np.int64) for log in logs]),
    }
    order = np.argsort(sent, kind="stable")
    return {name: values[order] for name, values in steps.items()}


# -- analysis ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    install_ms: list[float]
    first_new_ms: list[float]  # push returned -> the first step answer on the new version
    all_new_ms: list[float]  # push returned -> every stream has had an answer on it
    call_ms: list[float]  # the push call, client side (hash, upload, install, answer)
    steady: np.ndarray  # latencies (ms) of the steps in steady windows
    around: np.ndarray  # latencies (ms) of the steps in flight in the windows centred on pushes
    worst_steady_p99: float  # of single windows
    worst_around_p99: float
    steady_windows: int
    steps_per_s: float  # in steady windows
    step_errors: int
    backwards: int  # a stream's version went down
    stale: int  # sent after a push returned, answered on older weights
    push_errors: list[str]


def summarize(result: Run, streams: int) -> Summary:
    steps, pushes = result.steps, [p for p in result.pushes if not p.error]
    first_new, all_new, stale = [], [], 0
    for push in pushes:
        on_new = steps["version"] >= push.number
        first_new.append((steps["received"][on_new].min(initial=math.inf) - push.end) * 1e3)
        firsts = [
            steps["received"][on_new & (steps["stream"] == s)].min(initial=math.inf) for s in range(streams)
        ]
        all_new.append((max(firsts) - push.end) * 1e3)
        stale += int(np.count_nonzero((steps["sent"] > push.end) & ~on_new))
    around = [_in_flight(steps, (p.start + p.end) / 2 - 0.5) for p in pushes]
    windows = _steady_windows(result.measured, result.pushes)
    steady = [_inside(steps, start, zone_end) for start, zone_end in windows]
    return Summary(
        install_ms=[p.install_ms for p in pushes],
        first_new_ms=first_new,
        all_new_ms=all_new,
        call_ms=[(p.end - p.start) * 1e3 for p in pushes],
        steady=np.concatenate([np.empty(0), *steady]),
        around=np.concatenate([np.empty(0), *around]),
        worst_steady_p99=_max([_pct(w, 99) for w in steady if len(w)]),  # slow steps leave some empty
        worst_around_p99=_max([_pct(w, 99) for w in around if len(w)]),
        steady_windows=len(windows),
        steps_per_s=sum(len(w) for w in steady) / max(len(windows), 1),
        step_errors=len(result.errors),
        backwards=_backwards(steps),
        stale=stale,
        push_errors=[p.error for p in result.pushes if p.error],
    )


def _in_flight(steps: dict[str, np.ndarray], start: float) -> np.ndarray:
    """Latencies (ms) of the steps in flight at some time in [start, start + 1 s): with steps that
    take longer than the window, the steps sent in it would miss those a swap held up."""
    hit = (steps["sent"] < start + 1.0) & (steps["received"] > start)
    return steps["latency"][hit] * 1e3


def _inside(steps: dict[str, np.ndarray], start: float, zone_end: float) -> np.ndarray:
    """Latencies (ms) of the steps sent in [start, start + 1 s) and answered before `zone_end`."""
    hit = (steps["sent"] >= start) & (steps["sent"] < start + 1.0) & (steps["received"] <= zone_end)
    return steps["latency"][hit] * 1e3


def _steady_windows(measured: tuple[float, float], pushes: Sequence[Push]) -> list[tuple[float, float]]:
    """Whole 1 s windows inside `measured`, at least 1 s from every push call: (start, end of the
    steady stretch it lies in)."""
    busy = sorted((p.start - 1.0, p.end + 1.0) for p in pushes)
    windows, edge = [], measured[0]
    for busy_from, busy_to in [*busy, (measured[1], math.inf)]:
        zone_end = min(busy_from, measured[1])
        windows += [(edge + k, zone_end) for k in range(int(max(0.0, zone_end - edge)))]
        edge = max(edge, busy_to)
    return windows


def _backwards(steps: dict[str, np.ndarray]) -> int:
    order = np.lexsort((steps["sent"], steps["stream"]))
    stream, version = steps["stream"][order], steps["version"][order]
    return int(np.count_nonzero((np.diff(version) < 0) & (np.diff(stream) == 0)))


def _pct(values: np.ndarray | list[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def _max(values: list[float]) -> float:
    return max(values, default=math.nan)


# -- report -----------------------------------------------------------------------------------------


def table_row(label: str, streams: int, pushes: int, s: Summary) -> str:
    p99_steady, p99_around = _pct(s.steady, 99), _pct(s.around, 99)
    errors = s.step_errors + s.backwards + s.stale + len(s.push_errors)
    return (
        f"| {label} | {streams} | {len(s.install_ms)}/{pushes} "
        f"| {_pct(s.install_ms, 50):.1f} / {_max(s.install_ms):.1f} "
        f"| {_pct(s.first_new_ms, 50):.1f} / {_max(s.first_new_ms):.1f} "
        f"| {p99_steady:.1f} | {p99_around:.1f} | {p99_around / p99_steady:.2f} | {errors} |"
    )


def diagnostics_row(label: str, result: Run, s: Summary) -> str:
    timeline = result.timeline
    return (
        f"| {label} | {result.threads} | {timeline.interval:.1f} / {timeline.steady:.1f} "
        f"| {s.steps_per_s:,.0f} | {_pct(s.steady, 50):.1f} / {_pct(s.around, 50):.1f} "
        f"| {s.worst_steady_p99:.1f} / {s.worst_around_p99:.1f} "
        f"| {_pct(s.call_ms, 50):.0f} / {_max(s.call_ms):.0f} | {_max(s.all_new_ms):.1f} "
        f"| {s.steady_windows} / {len(s.steady)} / {len(s.around)} "
        f"| {s.step_errors} / {s.backwards} / {s.stale} / {len(s.push_errors)} "
        f"| {result.client_cores:.2f} / {result.server_cores:.2f} |"
    )


MAIN_HEADER = (
    "| model | streams | pushes | install_ms median / max | first step on new version ms median / max "
    "| p99 steady ms | p99 around swaps ms | ratio | errors |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)
DIAGNOSTICS_HEADER = (
    "| model | server threads | interval / steady s | steps/s steady | p50 ms steady / swaps "
    "| worst 1 s window p99 ms steady / swaps | push call ms median / max "
    "| all streams on new version ms, max | steady windows / steps / steps around swaps "
    "| step errors / backwards / stale / push errors | CPU cores client / server |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pushes", type=int, default=5, help="pushes per model")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between pushes (at least)")
    parser.add_argument(
        "--steady", type=float, default=3.0, help="steady seconds before and after (at least)"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds stepped before measuring")
    parser.add_argument("--streams", type=int, default=64, help="single-env streams")
    parser.add_argument(
        "--client-processes", type=int, default=1, help="processes the streams are split among"
    )
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (all models)")
    parser.add_argument("--models", default="default,resnet18", help="comma-separated: default, resnet18")
    parser.add_argument("--quick", action="store_true", help="the default model only, 2 pushes (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.pushes, args.models = 2, "default"
    scenarios = [SCENARIOS[name] for name in args.models.split(",")]
    started = time.perf_counter()
    summaries = []
    for scenario in scenarios:
        result = run(scenario, args)
        summaries.append((scenario, result, summarize(result, args.streams)))
    print(
        f"{args.streams} single-env streams in {args.client_processes} client process(es), "
        f"{os.cpu_count()} cores; {time.perf_counter() - started:.0f} s in all\n\n{MAIN_HEADER}"
    )
    for scenario, _, summary in summaries:
        print(table_row(scenario.label, args.streams, args.pushes, summary))
    print(f"\n{DIAGNOSTICS_HEADER}")
    for scenario, result, summary in summaries:
        print(diagnostics_row(scenario.label, result, summary))
    print("\ntargets: install_ms <= 50 for the default model; p99 around swaps <= 2x steady (ratio <= 2)")
    for scenario, result, summary in summaries:
        for error in [*summary.push_errors, *result.errors][:10]:
            print(f"{scenario.label}: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
