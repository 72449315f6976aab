"""`encode-video --jobs N`: several videos decoded at once in worker processes, one model; each
video's frames in order and its LSTM state its own, the outputs those of `--jobs 1` and of the
in-process model; a damaged video or a crashed worker fails that video only; cores from the
cgroup quota and the affinity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import reference_embeddings
from videos import write_video

from vidlstm.models import InferenceModel, PixelFormat
from vidlstm.models.video import decode_video
from vidlstm.selection import FrameSelection
from vidlstm.tools.batch.cli import encode_video_main
from vidlstm.tools.batch.cores import usable_cores
from vidlstm.tools.batch.decoders import DecodeOptions, DecoderPool, Message


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Videos of different lengths (so chunks of several videos meet in one model call at
    different offsets), one of them damaged half-way."""
    root = tmp_path_factory.mktemp("clips")
    for index, frames in enumerate((37, 5, 61, 23, 44)):
        write_video(root / f"clip{index}.mp4", frames=frames, first_image=9 * index)
    write_video(root / "vp9.webm", codec="libvpx-vp9", frames=12)
    full = write_video(root.parent / "full.mp4", frames=60, faststart=True)
    (root / "cut.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return root


def _encode(clips: Path, out: Path, *flags: str) -> dict[str, dict[str, object]]:
    code = encode_video_main(["--quiet", str(clips), "--out", str(out), "--device", "cpu", *flags])
    assert code == 1  # cut.mp4 fails
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {Path(str(r["source"])).name: r for r in records}


def test_jobs_give_the_outputs_of_one_job_and_of_the_model(
    clips: Path, model: InferenceModel, tmp_path: Path
) -> None:
    # Chunks of 8 frames: every video spans several chunks, and each call mixes videos.
    one = _encode(clips, tmp_path / "one", "--jobs", "1", "--chunk-frames", "8", "--save-state")
    three = _encode(clips, tmp_path / "three", "--jobs", "3", "--chunk-frames", "8", "--save-state")
    for records in (one, three):
        assert records["cut.mp4"]["status"] == "failed"
        assert "damaged video: truncated" in str(records["cut.mp4"]["error"])
        assert {name for name, r in records.items() if r["status"] == "ok"} == {
            p.name for p in clips.iterdir() if p.name != "cut.mp4"
        }
    for video in clips.iterdir():
        if video.name == "cut.mp4":
            assert not (tmp_path / "three" / "cut.mp4.npz").exists()
            continue
        a, b = (
            np.load(tmp_path / "one" / f"{video.name}.npz"),
            np.load(tmp_path / "three" / f"{video.name}.npz"),
        )
        frames = np.stack([f.image for f in decode_video(video, gray=True)])
        expected = reference_embeddings(model, frames, PixelFormat.GRAY)
        np.testing.assert_allclose(b["embeddings"], a["embeddings"], atol=1e-5, rtol=0, err_msg=video.name)
        np.testing.assert_allclose(a["embeddings"], expected, atol=1e-5, rtol=0, err_msg=video.name)
        np.testing.assert_allclose(b["state_h"], a["state_h"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(b["state_c"], a["state_c"], atol=1e-5, rtol=0)
        assert b["frame_indices"].tolist() == list(range(len(frames)))
        np.testing.assert_array_equal(b["timestamps_ms"], a["timestamps_ms"])
    rerun = _encode(clips, tmp_path / "three", "--jobs", "3", "--chunk-frames", "8", "--save-state")
    assert {name: r["status"] for name, r in rerun.items()} == {
        name: "failed" if name == "cut.mp4" else "skipped" for name in three
    }


def _options(model: InferenceModel) -> DecodeOptions:
    return DecodeOptions(model.input_spec, FrameSelection(), 4, "pyav", 1, 1)


def test_a_decoder_that_dies_fails_its_video_and_is_replaced(model: InferenceModel, tmp_path: Path) -> None:
    long = write_video(tmp_path / "long.mp4", frames=400)
    short = write_video(tmp_path / "short.mp4", frames=6)
    with DecoderPool(1, _options(model)) as pool:
        pool.assign(0, 1, long)
        first = pool.receive()
        assert (first[0].kind, first[0].video) == ("chunk", 1)
        os.kill(pool._workers[0][0].pid or 0, signal.SIGKILL)  # an FFmpeg crash, say
        messages: list[Message] = []
        while not any(m.kind != "chunk" for m in messages):
            messages += pool.receive()
        end = messages[-1]
        assert (end.kind, end.video) == ("error", 1)
        assert f"the decoder process died (exit code {-signal.SIGKILL}) on this video" in str(end.payload)
        assert pool.idle() == [0]
        pool.assign(0, 2, short)  # the new worker decodes the next video
        messages = []
        while not any(m.kind == "done" for m in messages):
            messages += pool.receive()
        chunks = [m.payload for m in messages if m.kind == "chunk"]
        assert sum(len(c.frames) for c in chunks) == 6


def test_a_worker_runs_only_a_little_ahead(model: InferenceModel, tmp_path: Path) -> None:
    """Memory stays bounded: a worker whose chunks are not read waits (its pipe is full) instead
    of decoding the whole video into memory."""
    video = write_video(tmp_path / "long.mp4", frames=600)
    with DecoderPool(1, _options(model)) as pool:
        pool.assign(0, 1, video)
        first = pool.receive()
        time.sleep(2.0)  # ample time to decode all 150 chunks, were it not held up
        ready = pool.receive()
        assert len(first) + len(ready) < 30, len(first) + len(ready)


def _cgroup(tmp_path: Path, files: dict[str, str], line: str) -> tuple[Path, Path]:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "self_cgroup").write_text(line)
    return tmp_path, tmp_path / "self_cgroup"


def test_usable_cores_follow_the_cgroup_quota_and_the_affinity(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    v2 = {"cpu.max": "max 100000\n", "job/cpu.max": "150000 100000\n", "job/task/cpu.max": "max 100000\n"}
    assert usable_cores(*_cgroup(tmp_path / "a", v2, "0::/job/task\n")) == 1  # a parent's 1.5 cores
    unlimited = {"cpu.max": "max 100000\n"}
    assert usable_cores(*_cgroup(tmp_path / "b", unlimited, "0::/\n")) == affinity
    v1 = {"cpu,cpuacct/pod/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/pod/cpu.cfs_period_us": "100000\n"}
    assert usable_cores(*_cgroup(tmp_path / "c", v1, "4:cpu,cpuacct:/pod\n1:name=systemd:/\n")) == 1
    many = {"cpu.max": "6400000 100000\n"}  # 64 cores of quota: the affinity is the limit
    assert usable_cores(*_cgroup(tmp_path / "d", many, "0::/\n")) == affinity
    assert usable_cores(tmp_path / "none", tmp_path / "missing") == affinity


def test_jobs_must_be_a_whole_number_of_at_least_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        encode_video_main([str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out"), "--jobs", "0"])
    assert exited.value.code == 2
    assert "argument --jobs: must be a whole number >= 1, got '0'" in capsys.readouterr().err


def test_decoder_processes_import_no_torch(tmp_path: Path) -> None:
    """What a decoder process imports (vidlstm.models names load when first used): no torch, so
    decoders start in a fraction of a second."""
    check = "import sys, vidlstm.tools.batch.decoders; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", check], cwd=tmp_path, check=True, timeout=60)


def test_a_model_failure_fails_the_videos_of_that_call_only(
    model: InferenceModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The videos whose chunks were in the failed call fail with its error; the run goes on."""
    from vidlstm.service.engine import BatchEngine, Job, JobResult

    (tmp_path / "in").mkdir()
    for index in range(3):
        write_video(tmp_path / "in" / f"clip{index}.mp4", frames=20, first_image=index)
    run, calls = BatchEngine.run, []

    def flaky(self: BatchEngine, jobs: list[Job]) -> list[JobResult]:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("out of memory, say")
        return run(self, jobs)

    monkeypatch.setattr(BatchEngine, "run", flaky)
    out = tmp_path / "out"
    flags = ["--quiet", str(tmp_path / "in"), "--out", str(out), "--device", "cpu", "--jobs", "1"]
    assert encode_video_main(flags) == 1
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    statuses = {Path(r["source"]).name: (r["status"], r["error"]) for r in records}
    assert statuses["clip0.mp4"] == ("failed", "RuntimeError: out of memory, say")
    assert statuses["clip1.mp4"][0] == statuses["clip2.mp4"][0] == "ok"
    assert sorted(p.name for p in out.iterdir()) == ["clip1.mp4.npz", "clip2.mp4.npz", "manifest.jsonl"]
