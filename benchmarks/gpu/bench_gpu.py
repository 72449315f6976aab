"""The GPU benchmark, in one run: parity against the CPU, the model in process, the server over gRPC,
and encode-video on 720p clips; fp32 vs bf16 vs compiled. Writes results.json and results.md to --out.

    python benchmarks/gpu/bench_gpu.py --device cuda --out DIR     # on the GPU machine (run.sh)
    python benchmarks/gpu/bench_gpu.py --device cpu --quick --out DIR   # a dry run of this script

In process: one T=1 step with state in and out at batch 1/64/256/1024, frames from host memory and
embeddings back to it; with cuDNN autotuning off once, and a CUDA graph of the same step, to see
what each buys. Server: `vidlstm serve` in its own process, clients in `--client-procs` processes
(one asyncio process could not feed a GPU): 64 single-env streams, and 8 x 256-env vector streams,
with the mean batch the server formed (from /metrics) and a bare gRPC echo of the same messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))

from bench_precision import Variant, load, steps_per_s  # noqa: E402
from bench_stream import Result, echo, free_port, process, vidlstm  # noqa: E402

from vidlstm.models import InferenceModel, build_model, default_spec  # noqa: E402

VARIANTS = [
    Variant("fp32", "fp32"),
    Variant("bf16", "bf16"),
    Variant("fp16", "fp16"),
    Variant("fp32 compiled", "fp32", compile=True),
    Variant("bf16 compiled", "bf16", compile=True),
]
SERVER_VARIANTS = [VARIANTS[0], VARIANTS[1], VARIANTS[4]]


def parity(device: torch.device) -> list[dict[str, Any]]:
    """Max |device - CPU fp32| / max |CPU fp32| over a sequence with resets, per precision."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 16, 1, 84, 84), dtype=np.uint8)
    starts = rng.random((8, 16)) < 0.25
    want, _ = InferenceModel(build_model(default_spec()), torch.device("cpu")).encode(frames, None, starts)
    rows = []
    for variant in VARIANTS[:3]:
        got, _ = load(default_spec(), variant, device).encode(frames, None, starts)
        rows.append(
            {
                "precision": variant.name,
                "relative_error": float(np.abs(got - want).max() / np.abs(want).max()),
            }
        )
    return rows


def cuda_graph_steps_per_s(model: InferenceModel, batch: int, duration: float) -> float:
    """The same step as `steps_per_s`, replayed from a CUDA graph (frames copied into its input)."""
    inp = model.input_spec
    host = torch.randint(
        0, 256, (1, batch, inp.channels, inp.height, inp.width), dtype=torch.uint8
    ).pin_memory()
    frames = host.to(model.device)
    state = model.initial_state(batch)
    starts = torch.zeros(1, batch, dtype=torch.bool, device=model.device)

    def step() -> torch.Tensor:
        stacked, history = model.stack(frames, state, starts)
        features = model.features(stacked.flatten(0, 1)).view(1, batch, -1)
        outputs, new_state = model.recur(features, state, starts, history)
        for name, tensor in new_state.items():
            state[name].copy_(tensor)
        return outputs

    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = step()
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < duration:
            frames.copy_(host, non_blocking=True)
            graph.replay()
            outputs.cpu()
            steps += 1
    return steps * batch / (time.perf_counter() - started)


def in_process(device: torch.device, batches: list[int], duration: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for variant in VARIANTS:
        guarded(rows, variant.name, lambda v=variant: variant_rows(device, v, batches, duration))
    if device.type == "cuda":
        off = Variant("fp32, cudnn.benchmark off", "fp32")
        guarded(rows, off.name, lambda: variant_rows(device, off, batches, duration, cudnn_benchmark=False))
    return rows


def variant_rows(
    device: torch.device, variant: Variant, batches: list[int], duration: float, cudnn_benchmark: bool = True
) -> list[dict[str, Any]]:
    """One variant at each batch size, and as a CUDA graph for fp32 and bf16 on CUDA."""
    model = load(default_spec(), variant, device)
    torch.backends.cudnn.benchmark = cudnn_benchmark  # after InferenceModel switched it on for CUDA
    rows = [
        {"variant": variant.name, "batch": b, "frames_per_s": steps_per_s(model, b, duration)}
        for b in batches
    ]
    if device.type == "cuda" and variant.name in ("fp32", "bf16"):
        name = f"{variant.name} CUDA graph"
        rows += [
            {"variant": name, "batch": b, "frames_per_s": cuda_graph_steps_per_s(model, b, duration)}
            for b in batches
        ]
    return rows


def guarded(rows: list[dict[str, Any]], label: str, run: Callable[[], list[dict[str, Any]]]) -> None:
    """Adds run()'s rows, or a row with its error: one failed variant must not lose the others."""
    try:
        rows.extend(run())
    except Exception as error:
        rows.append({"variant": label, "error": f"{type(error).__name__}: {error}"[-500:]})


def _client(args: tuple[str, int, int, int, float]) -> Result:
    """One client process: `streams` streams of `envs` envs against the server (or the echo)."""
    kind, port, streams, envs, duration = args
    if kind == "echo":
        return asyncio.run(echo(port, streams, envs, duration))
    return asyncio.run(vidlstm(port, streams, envs, duration))


def clients(kind: str, port: int, streams: int, envs: int, procs: int, duration: float) -> dict[str, Any]:
    """`streams` streams spread over `procs` client processes; frames/s summed, latencies pooled."""
    procs = min(procs, streams)
    jobs = [(kind, port, streams // procs + (i < streams % procs), envs, duration) for i in range(procs)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        results = pool.map(_client, jobs)
    return {
        "frames_per_s": sum(r.frames_per_s for r in results),
        "p50_ms": float(np.median([r.p50_ms for r in results])),
        "p99_ms": max(r.p99_ms for r in results),
    }


def batch_totals(metrics_port: int) -> dict[str, float]:
    """Sums and counts of the batch histograms (frames, model seconds, queue delay) from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        lines = page.read().decode().splitlines()
    wanted = ("vidlstm_batch_frames_", "vidlstm_model_seconds_", "vidlstm_queue_delay_seconds_")
    return {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith(wanted)}


def where_time_goes(before: dict[str, float], after: dict[str, float], duration: float) -> dict[str, float]:
    """Mean batch, model time per batch, the share of the run the model thread was busy, mean queue
    delay: a busy model thread means the engine bounds throughput, an idle one the request path."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = max(delta("vidlstm_batch_frames_count"), 1.0)
    return {
        "mean_batch": delta("vidlstm_batch_frames_sum") / batches,
        "model_ms_per_batch": 1e3 * delta("vidlstm_model_seconds_sum") / batches,
        "model_busy": delta("vidlstm_model_seconds_sum") / duration,
        "queue_ms": 1e3
        * delta("vidlstm_queue_delay_seconds_sum")
        / max(delta("vidlstm_queue_delay_seconds_count"), 1.0),
    }


def served(
    device: str,
    scenarios: list[tuple[int, int]],
    procs: int,
    duration: float,
    max_batch: int,
    variants: list[Variant],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    echo_port = free_port()
    with process([sys.executable, str(BENCHMARKS / "echo_server.py"), str(echo_port)], echo_port):
        for streams, envs in scenarios:
            row = clients("echo", echo_port, streams, envs, procs, duration)
            rows.append({"server": "gRPC echo", "streams": streams, "envs": envs, **row})
    for variant in variants:
        guarded(
            rows,
            f"vidlstm {variant.name}",
            lambda v=variant: server_rows(device, v, scenarios, procs, duration, max_batch),
        )
    return rows


def server_rows(
    device: str,
    variant: Variant,
    scenarios: list[tuple[int, int]],
    procs: int,
    duration: float,
    max_batch: int,
) -> list[dict[str, Any]]:
    """`vidlstm serve` in `variant`, under each scenario of `streams` x `envs`."""
    port, metrics_port = free_port(), free_port()
    flags = ["--device", device, "--precision", variant.precision, "--compile", str(variant.compile).lower()]
    flags += ["--max-batch-size", str(max_batch), "--port", str(port), "--metrics-port", str(metrics_port)]
    flags += ["--log-level", "WARNING", "--state-capacity", "8192"]
    rows = []
    started = time.perf_counter()
    with process([sys.executable, "-m", "vidlstm", "serve", *flags], port):
        ready_s = time.perf_counter() - started
        for streams, envs in scenarios:
            before = batch_totals(metrics_port)
            started_at = time.perf_counter()
            row = clients("vidlstm", port, streams, envs, procs, duration)
            seconds = time.perf_counter() - started_at
            after = batch_totals(metrics_port)
            rows.append(
                {
                    "server": f"vidlstm {variant.name}",
                    "streams": streams,
                    "envs": envs,
                    **row,
                    **where_time_goes(before, after, seconds),
                    "start_s": ready_s,
                }
            )
    return rows


def video(device: str, clips: int, frames: int, out: Path) -> list[dict[str, Any]]:
    """`vidlstm encode-video` over a folder of 720p H.264 clips: frames/s over the command's wall time,
    and over the manifest's per-video times."""
    from bench_video import make_video

    folder = out / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(clips):
        make_video(folder / f"clip{index}.mp4", frames)
    rows = []
    for precision in ("fp32", "bf16"):
        target = out / f"embeddings-{precision}"
        command = [sys.executable, "-m", "vidlstm", "encode-video", str(folder), "--out", str(target)]
        command += ["--device", device, "--precision", precision, "--quiet"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"encode-video exited {done.returncode}: {done.stderr[-2000:]}")
        records = [json.loads(line) for line in (target / "manifest.jsonl").read_text().splitlines()]
        encoded = sum(r["frames"] for r in records)
        rows.append(
            {
                "precision": precision,
                "videos": len(records),
                "frames": encoded,
                "frames_per_s": encoded / wall,  # the whole command, model load included
                "frames_per_video_s": encoded / sum(r["seconds"] for r in records),  # videos may overlap
                "wall_s": wall,
            }
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# vidlstm on {results['device_name']}", "", f"torch {results['torch']}", ""]

    def table(title: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        keys = list(dict.fromkeys(key for row in rows for key in row))
        lines.extend([f"## {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)])
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
        lines.append("")

    for title in ("parity", "in_process", "served", "video", "targets"):
        table(title.replace("_", " "), results.get(title, []))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's two targets, for each server variant's vector-stream row."""
    model = {(r["variant"], r["batch"]): r["frames_per_s"] for r in results["in_process"] if "error" not in r}
    rows = []
    for row in results["served"]:
        if "error" in row or not row["server"].startswith("vidlstm") or row["envs"] == 1:
            continue
        variant = row["server"].removeprefix("vidlstm ")
        batch = min((b for _, b in model), key=lambda b: abs(b - row["mean_batch"]))
        reference = model.get((variant, batch), float("nan"))
        rows.append(
            {
                "server": row["server"],
                "frames_per_s": row["frames_per_s"],
                "in_process_batch": batch,
                "ratio": row["frames_per_s"] / reference,
                "ratio_target": 0.8,
                "fps_target": 100_000,
            }
        )
    return rows


def stage(results: dict[str, Any], name: str, out: Path, run: Callable[[], Any]) -> None:
    """Runs one part; a failure is recorded and the next part still runs. Results are saved after each."""
    started = time.perf_counter()
    try:
        results[name] = run()
    except Exception as error:  # one broken part must not lose the others' figures
        results.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"
    print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and durations: a dry run")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per scenario")
    parser.add_argument("--client-procs", type=int, default=8)
    parser.add_argument(
        "--skip", nargs="*", default=[], help="parts to leave out: parity in_process served video"
    )
    parser.add_argument(
        "--server-variants",
        nargs="*",
        default=[v.name for v in SERVER_VARIANTS],
        help="server variants to run, by name (e.g. fp32 'bf16 compiled')",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    quick = args.quick
    duration = 0.3 if quick else args.duration
    results: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "quick": quick,
    }
    parts: dict[str, Callable[[], Any]] = {
        "parity": lambda: parity(device),
        "in_process": lambda: in_process(device, [1, 8] if quick else [1, 64, 256, 1024], duration),
        "served": lambda: served(
            args.device,
            [(4, 1), (2, 16)] if quick else [(64, 1), (8, 256)],
            2 if quick else args.client_procs,
            duration,
            max_batch=16 if quick else 1024,
            variants=[v for v in VARIANTS if v.name in args.server_variants],
        ),
        "video": lambda: video(args.device, 2 if quick else 4, 8 if quick else 150, Path(tempfile.mkdtemp())),
    }
    for name, run in parts.items():
        if name not in args.skip:
            stage(results, name, args.out, run)
    if "served" in results and "in_process" in results:
        stage(results, "targets", args.out, lambda: targets(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
