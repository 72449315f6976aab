"""Video benchmark (issue 13): the stages alone on all cores, the serial bound they give, and
`vidlstm encode-video` end to end, all in one run on the same 720p H.264 clips (made here).

- D: decode only, one process per core (PyAV, frame threading on): to RGB, and the luma plane as
  a numpy view (D_gray, the gray decode ceiling);
- P: preprocessing alone (luma range expansion + resize to 84x84, the gray path), one process per
  core; and decode + preprocess per frame on one thread, via RGB (before) and via the luma (after);
- M: the default model alone at the pipeline's batch (128 frames), the better of one process with
  a torch thread per core and one single-threaded process per core;
- B = 1 / (1/D_gray + 1/P + 1/M): the serial bound of this machine for the gray default model;
- encode-video: `--jobs 1`, the default and `--ray` (needs vidlstm[ray]), and an earlier version
  (`--before REV`), each as the frames/s after start-up (the frame difference of a run on all clips
  and a run on one, over the time difference: Ray's start-up cancels out), with the peak memory (PSS
  of the run's processes) of the run on all clips;
  resnet18 at 224 (`--max-frames`) the same way.

    python benchmarks/bench_video.py [--clips 8] [--frames 300] [--before 084e114] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from vidlstm.models import PixelFormat, default_spec, prepare_frames
from vidlstm.models.video_chunks import prepared_chunks
from vidlstm.selection import FrameSelection
from vidlstm.tools.batch.cores import usable_cores

SPEC = default_spec().input
CHUNK = 128
# Fresh processes: forked ones can inherit a lock that an FFmpeg or OpenCV thread of this one held.
SPAWN = multiprocessing.get_context("spawn")
RESNET = '{"name": "resnet18", "encoder": {"name": "resnet18"}, "input": {"height": 224, "width": 224,'
RESNET += ' "grayscale": false, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}'


def make_video(path: Path, frames: int, seed: int = 0) -> None:
    """720p H.264 with textured, moving content (so decoding does real work)."""
    rng = np.random.default_rng(seed)
    texture = cv2.resize(rng.integers(0, 256, (180, 320, 3), dtype=np.uint8), (1600, 900))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for index in range(frames):
            x, y = (index * 3) % 300, (index * 2) % 160
            image = np.ascontiguousarray(texture[y : y + 720, x : x + 1280])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# -- the stages alone, in worker processes -------------------------------------------------------


def _decode(path: Path, luma: bool) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threading on: the decode ceiling
        count = 0
        for frame in container.decode(stream):
            if luma:
                np.frombuffer(frame.planes[0], np.uint8)  # a view: nothing converted or copied
            else:
                frame.to_ndarray(format="rgb24")
            count += 1
    return count


def _preprocess(path: Path, rounds: int) -> int:
    """The gray path's preprocessing of the first 30 frames' luma, `rounds` times (no decoding)."""
    with av.open(str(path)) as container:
        planes = []
        for frame in container.decode(video=0):
            plane = frame.planes[0]
            planes.append(np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :1280])
            if len(planes) == 30:
                break
    table = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
    for _ in range(rounds):
        for luma in planes:
            prepare_frames(cv2.LUT(luma, table)[None, ..., None], PixelFormat.GRAY, SPEC)
    return rounds * len(planes)


def _model_rate(threads: int, seconds: float) -> float:
    import torch

    from vidlstm.models import InferenceModel, build_model

    torch.set_num_threads(threads)
    model = InferenceModel(build_model(default_spec()), torch.device("cpu"))
    frames = np.random.default_rng(0).integers(0, 256, (CHUNK, 1, 1, 84, 84), dtype=np.uint8)
    state = None
    _, state = model.encode(frames, state)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        _, state = model.encode(frames, state)
        done += CHUNK
    return done / (time.perf_counter() - started)


def _parallel(workers: int, work: Callable[..., int], jobs: list[tuple[object, ...]]) -> float:
    """Frames/s of `jobs` run by `workers` processes (started before the clock)."""
    with ProcessPoolExecutor(workers, mp_context=SPAWN) as pool:
        list(pool.map(_noop, range(workers)))
        started = time.perf_counter()
        frames = sum(pool.map(work, *zip(*jobs, strict=True)))
        return frames / (time.perf_counter() - started)


def _noop(_: int) -> None:
    cv2.setNumThreads(1)


def _per_frame_ms(path: Path, luma: bool) -> float:
    """Decode + preprocess on one thread (the pipeline's first stage), ms per frame."""
    cv2.setNumThreads(1)
    started = time.perf_counter()
    chunks = prepared_chunks(
        path, SPEC, FrameSelection(), chunk_frames=CHUNK, backend="pyav", threads=1, luma=luma
    )
    frames = sum(len(chunk.frames) for chunk in chunks)
    return 1000 * (time.perf_counter() - started) / frames


# -- encode-video end to end ---------------------------------------------------------------------


def _pss_kib(root: int) -> int:
    """PSS of `root` and its descendants (shared pages split between them, so the sum is fair)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total


def _timed_run(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak PSS (KiB) of one run."""
    peak = 0
    started = time.perf_counter()
    devnull = subprocess.DEVNULL
    with subprocess.Popen(command, env=env, cwd="/", stdout=devnull, stderr=devnull) as process:
        while process.poll() is None:
            peak = max(peak, _pss_kib(process.pid))
            time.sleep(0.05)
    assert process.returncode == 0, command
    return time.perf_counter() - started, peak


def encode_rate(
    clips: list[Path], frames: int, flags: list[str], out: Path, env: dict[str, str]
) -> tuple[float, int]:
    """Frames/s after start-up (all clips vs one) and the peak PSS of the run on all clips."""
    base = [sys.executable, "-m", "vidlstm", "encode-video", "--quiet", *flags]
    one, _ = _timed_run([*base, str(clips[0]), "--out", str(out / "one")], env)
    everything, peak = _timed_run([*base, *map(str, clips), "--out", str(out / "all")], env)
    return (len(clips) - 1) * frames / (everything - one), peak


def earlier_version(rev: str, folder: Path) -> dict[str, str]:
    """The environment that runs `rev`'s vidlstm: its tree laid out as the installed package."""
    repo = Path(__file__).resolve().parents[1]
    source, package = folder / "src", folder / "pkg" / "vidlstm"
    source.mkdir(parents=True)
    package.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    for item in (source / "vidlstm").iterdir():
        (package / item.name).symlink_to(item)
    for name in ("models", "service", "clients", "tools"):
        (package / name).symlink_to(source / name)
    return {**os.environ, "PYTHONPATH": str(folder / "pkg")}


def measure(clips: list[Path], frames: int, root: Path, before: dict[str, str] | None) -> dict[str, float]:
    """One round of every measurement: frames/s, ms per frame and peak KiB, by name."""
    cores = usable_cores()
    env = {**os.environ}
    found = {
        "D": _parallel(cores, _decode, [(clip, False) for clip in clips]),
        "D_gray": _parallel(cores, _decode, [(clip, True) for clip in clips]),
        "P": _parallel(cores, _preprocess, [(clip, 4) for clip in clips[:cores]]),
        "rgb_ms": -_per_frame_ms(clips[0], False),  # negated: the best round is the largest
        "luma_ms": -_per_frame_ms(clips[0], True),
    }
    with ProcessPoolExecutor(cores, mp_context=SPAWN) as pool:
        found["M per process"] = sum(pool.map(_model_rate, [1] * cores, [3.0] * cores))
    with ProcessPoolExecutor(1, mp_context=SPAWN) as pool:
        found["M one process"] = pool.submit(_model_rate, cores, 3.0).result()
    spec = root / "resnet18.json"
    spec.write_text(RESNET)
    resnet = ["--spec", str(spec), "--max-frames", "16", "--chunk-frames", "16"]
    runs = {
        "jobs 1": (frames, ["--jobs", "1"], env),
        "default": (frames, [], env),
        "ray": (frames, ["--ray"], env),  # local Ray, default workers: its overhead vs the default
        "resnet jobs 1": (16, [*resnet, "--jobs", "1", "--threads", str(cores)], env),
        "resnet default": (16, resnet, env),
    }
    if before is not None:
        runs["before"] = (frames, [], before)
    for name, (count, flags, environment) in runs.items():
        out = Path(tempfile.mkdtemp(dir=root))
        found[name], found[f"{name} peak"] = encode_rate(clips, count, flags, out, environment)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=8, help="720p clips (default 8)")
    parser.add_argument("--frames", type=int, default=300, help="frames per clip (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each number is the best (default 3)")
    parser.add_argument("--before", help="an earlier revision to compare with (e.g. 084e114)")
    parser.add_argument("--quick", action="store_true", help="3 clips of 60 frames, one round: a smoke run")
    args = parser.parse_args()
    count, frames, rounds = (3, 60, 1) if args.quick else (args.clips, args.frames, args.rounds)
    cores = usable_cores()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        clips = [root / f"clip{index}.mp4" for index in range(count)]
        for index, clip in enumerate(clips):
            make_video(clip, frames, seed=index)
        before = earlier_version(args.before, root / "old") if args.before else None
        # Rounds interleave every measurement, and each keeps its best round: on a shared machine
        # the others' load only ever slows a measurement down.
        results = [measure(clips, frames, root, before) for _ in range(rounds)]
    best = {key: max(result[key] for result in results) for key in results[0]}
    report(best, count, frames, cores, args.before)


def report(best: dict[str, float], count: int, frames: int, cores: int, before: str | None) -> None:
    model = max(best["M per process"], best["M one process"])
    bound = 1 / (1 / best["D_gray"] + 1 / best["P"] + 1 / model)
    rgb_ms, luma_ms = -best["rgb_ms"], -best["luma_ms"]
    print(f"{count} clips of 1280x720 H.264, {frames} frames each; {cores} usable cores\n")
    print("| stage (all cores) | frames/s |\n|---|---:|")
    print(f"| D: decode to RGB ({cores} processes, frame threads) | {best['D']:,.0f} |")
    print(f"| D_gray: decode, luma plane as a view | {best['D_gray']:,.0f} |")
    print(f"| P: preprocess (luma range + resize to 84x84) | {best['P']:,.0f} |")
    print(
        f"| M: default model, batch {CHUNK} ({cores} x 1 thread: {best['M per process']:,.0f}; "
        f"1 x {cores}: {best['M one process']:,.0f}) | {model:,.0f} |"
    )
    print(f"| B = 1/(1/D_gray + 1/P + 1/M) | {bound:,.0f} |")
    print(
        f"\ndecode + preprocess on one thread: {rgb_ms:.2f} ms/frame via RGB, {luma_ms:.2f} via the luma "
        f"({rgb_ms / luma_ms:.2f}x)\n"
    )
    names = {
        "before": f"encode-video at {before} (before)",
        "jobs 1": "encode-video --jobs 1",
        "default": f"encode-video (default: --jobs {cores})",
        "ray": "encode-video --ray (local Ray, default --workers)",
        "resnet jobs 1": f"resnet18@224, --jobs 1 --threads {cores} (16 frames a clip)",
        "resnet default": "resnet18@224, default (16 frames a clip)",
    }
    print("| run | frames/s after start-up | / B | peak memory (PSS) |\n|---|---:|---:|---:|")
    for key, name in names.items():
        if key in best:
            share = "" if key.startswith("resnet") else f"{best[key] / bound:.2f}"
            print(f"| {name} | {best[key]:,.0f} | {share} | {best[key + ' peak'] / 1024:,.0f} MiB |")
    if before:
        print(f"\ndefault / before: {best['default'] / best['before']:.2f}x (target >= 1.8x)")
    print(f"default / B: {best['default'] / bound:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
