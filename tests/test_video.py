"""Video files -> embeddings: the CLI (in process and remote), the EncodeVideo RPC and Encode on
the same decoded frames agree; sampling, resumability, failures and path confinement."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerThread
from videos import write_video

from vidlstm.batch.inputs import InputError, expand_inputs
from vidlstm.clients import EncoderClient, FrameSelection, VidlstmError
from vidlstm.models import InferenceModel
from vidlstm.models.video import Sampling, decode_video
from vidlstm.service import ServerSettings
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc

VFR_TIMES = [0, 40, 50, 200, 210, 215, 500, 530, 900]
CLI = [sys.executable, "-m", "vidlstm", "encode-video", "--quiet"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    (root / "nested").mkdir()
    return {
        "h264": write_video(root / "h264.mp4", frames=40),
        "vp9": write_video(root / "nested" / "vp9.webm", codec="libvpx-vp9", frames=20),
        "mjpeg": write_video(
            root / "nested" / "mjpeg.avi", codec="mjpeg", pixel_format="yuvj420p", frames=20
        ),
        "odd": write_video(root / "odd.mp4", width=317, height=211, pixel_format="yuv444p", frames=15),
        "vfr": write_video(root / "vfr.mkv", times_ms=VFR_TIMES),
    }


@pytest.fixture(scope="module")
def video_server(videos: dict[str, Path], model: InferenceModel):
    settings = ServerSettings(
        port=0, video_root=videos["h264"].parent, max_video_bytes=200_000, video_chunk_frames=8
    )
    running = ServerThread(settings, model)
    yield running
    running.stop()


def _decoded(path: Path, sampling: Sampling | None = None) -> tuple[np.ndarray, list[float], list[int]]:
    frames = list(decode_video(path, sampling))
    return np.stack([f.image for f in frames]), [f.timestamp_ms for f in frames], [f.index for f in frames]


def _via_rpc(client: EncoderClient, path: Path | str, **kwargs: object) -> tuple[np.ndarray, list[float]]:
    parts = list(client.encode_video(path, **kwargs))  # type: ignore[arg-type]
    assert parts[-1].summary is not None
    body = parts[:-1]
    return np.concatenate([p.embeddings for p in body]), [t for p in body for t in p.timestamps_ms]


def test_cli_rpc_and_encode_agree(
    videos: dict[str, Path], video_server: ServerThread, tmp_path: Path
) -> None:
    root = videos["h264"].parent
    result = subprocess.run(
        [*CLI, str(root), "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    with EncoderClient(video_server.address) as client:
        for name, path in videos.items():
            saved = np.load(tmp_path / path.relative_to(root).with_suffix(".npz"))
            frames, times, indices = _decoded(path)
            direct = client.encode(frames, pixel_format="RGB").embeddings
            uploaded, uploaded_times = _via_rpc(client, path)
            np.testing.assert_allclose(saved["embeddings"], direct, atol=1e-4, rtol=0, err_msg=name)
            np.testing.assert_allclose(uploaded, direct, atol=1e-4, rtol=0, err_msg=name)
            np.testing.assert_allclose(saved["timestamps_ms"], times)
            assert uploaded_times == times
            assert saved["frame_indices"].tolist() == indices
            metadata = json.loads(str(saved["metadata"]))
            assert metadata["weights_hash"] == client.info().weights_hash
            assert metadata["source"] == str(path)
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in records) == ["ok"] * len(videos)


def test_fps_sampling_picks_presentation_times(videos: dict[str, Path], video_server: ServerThread) -> None:
    _, times, indices = _decoded(videos["h264"], Sampling(fps=10))
    assert times == pytest.approx([100.0 * k for k in range(14)])  # 40 frames at 30 fps
    assert indices == [3 * k for k in range(14)]
    assert _decoded(videos["vfr"], Sampling(fps=10))[1] == [
        0,
        200,
        500,
        900,
    ]  # first frame at/after each 0.1 s
    assert _decoded(videos["vfr"], Sampling(start_s=0.2, end_s=0.6))[1] == [200, 210, 215, 500, 530]
    assert _decoded(videos["vfr"], Sampling(every=3, max_frames=2))[2] == [0, 3]
    with EncoderClient(video_server.address) as client:
        _, rpc_times = _via_rpc(client, "vfr.mkv", selection=FrameSelection(fps=10), server_path=True)
    assert rpc_times == [0, 200, 500, 900]


def test_video_rpc_answers_in_chunks_with_a_summary(
    videos: dict[str, Path], video_server: ServerThread
) -> None:
    with EncoderClient(video_server.address) as client:
        parts = list(client.encode_video("h264.mp4", server_path=True, return_state=True, dtype="float16"))
    assert [len(p.embeddings) for p in parts[:-1]] == [8, 8, 8, 8, 8]
    assert parts[0].embeddings.dtype == np.float16
    summary = parts[-1].summary
    assert summary is not None
    assert (summary.frames, summary.width, summary.height, summary.codec) == (40, 96, 72, "h264")
    assert parts[-1].final_state is not None
    assert parts[-1].final_state.tensors["h"].shape == (1, 256)
    assert video_server.servicer.live_envs == 0


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        ("../outside.mp4", grpc.StatusCode.INVALID_ARGUMENT, "contains '..'"),
        ("/etc/hostname", grpc.StatusCode.PERMISSION_DENIED, "outside the server's video root"),
        ("escape.mp4", grpc.StatusCode.PERMISSION_DENIED, "outside the server's video root"),
        ("missing.mp4", grpc.StatusCode.NOT_FOUND, "no video file"),
    ],
)
def test_paths_are_confined_to_the_video_root(
    videos: dict[str, Path], video_server: ServerThread, path: str, code: grpc.StatusCode, message: str
) -> None:
    root = videos["h264"].parent
    outside = write_video(root.parent / "outside.mp4", frames=2)
    link = root / "escape.mp4"
    if not link.exists():
        link.symlink_to(outside)
    with EncoderClient(video_server.address) as client, pytest.raises(VidlstmError, match=message) as raised:
        list(client.encode_video(path, server_path=True))
    assert raised.value.code == code


def test_bad_uploads_get_clear_statuses(
    videos: dict[str, Path], video_server: ServerThread, server: ServerThread, tmp_path: Path
) -> None:
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(300_000))  # over max_video_bytes: refused while uploading
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(5000))
    with EncoderClient(video_server.address) as client:
        with pytest.raises(VidlstmError, match="over the limit of 200000 bytes") as too_big:
            list(client.encode_video(big))
        assert too_big.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(VidlstmError, match="not a readable video") as corrupt:
            list(client.encode_video(garbage))
        assert corrupt.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(_via_rpc(client, videos["vp9"])[0]) == 20  # still serving
    with (
        EncoderClient(server.address) as client,
        pytest.raises(VidlstmError, match="no --video-root") as raised,
    ):
        list(client.encode_video("h264.mp4", server_path=True))
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_corrupt_and_truncated_files_fail_alone(
    videos: dict[str, Path], video_server: ServerThread, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = write_video(inputs / "good.mp4", frames=10)
    (inputs / "garbage.mp4").write_bytes(os.urandom(3000))
    (inputs / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "out"
    result = subprocess.run(
        [*CLI, str(inputs), "--out", str(out), "--server", video_server.address, "--format", "parquet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    records = {
        Path(r["source"]).name: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    }
    assert {name: r["status"] for name, r in records.items()} == {
        "good.mp4": "ok",
        "garbage.mp4": "failed",
        "truncated.mp4": "failed",
    }
    assert "not a readable video" in records["garbage.mp4"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["good.parquet", "manifest.jsonl"]


def test_killed_run_leaves_no_partial_output_and_resumes(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = [f"clip{i}.mp4" for i in range(6)]
    for name in names:
        write_video(inputs / name, frames=300, width=160, height=120)
    out = tmp_path / "out"
    manifest = out / "manifest.jsonl"
    with subprocess.Popen([*CLI, str(inputs), "--out", str(out)], stderr=subprocess.DEVNULL) as process:
        deadline = time.monotonic() + 120
        while not (manifest.exists() and '"ok"' in manifest.read_text()):
            assert process.poll() is None, "the run ended before its first video was recorded"
            assert time.monotonic() < deadline, "first video never finished"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finished = {Path(r["source"]).name for r in map(json.loads, manifest.read_text().splitlines())}
    assert finished < set(names), "the run ended before it could be killed"
    for output in out.glob("*.npz"):  # whatever carries a final name is complete
        assert np.load(output)["embeddings"].shape == (300, 256)
    rerun = subprocess.run(
        [*CLI, str(inputs), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    second = [json.loads(line) for line in manifest.read_text().splitlines()][-len(names) :]
    statuses = {Path(r["source"]).name: r["status"] for r in second}
    assert {n for n, s in statuses.items() if s == "skipped"} == finished
    assert {n for n, s in statuses.items() if s == "ok"} == set(names) - finished
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [n.replace(".mp4", ".npz") for n in names] + ["manifest.jsonl"]
    )


def test_inputs_expand_folders_globs_and_lists(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.mp4", "a/b/y.webm", "a/b/notes.txt", "z.avi"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text(f"# videos\n{tmp_path / 'z.avi'}\n\n")
    found = expand_inputs(
        [str(tmp_path / "a"), str(tmp_path / "a" / "**" / "*.webm"), f"@{tmp_path / 'list.txt'}"]
    )
    assert sorted((str(v.relative), v.path.name) for v in found) == [
        ("b/y.webm", "y.webm"),
        ("x.mp4", "x.mp4"),
        ("z.avi", "z.avi"),
    ]
    (tmp_path / "a" / "x.webm").write_bytes(b"")
    with pytest.raises(InputError, match="would both write"):
        expand_inputs([str(tmp_path / "a")])
    with pytest.raises(InputError, match="no such file or folder"):
        expand_inputs([str(tmp_path / "nope.mp4")])


def test_stalled_upload_is_dropped(videos: dict[str, Path], model: InferenceModel) -> None:
    running = ServerThread(ServerSettings(port=0, stream_idle_timeout_s=0.5), model)
    data = videos["h264"].read_bytes()

    def stalling() -> Iterator[pb.VideoRequest]:
        yield pb.VideoRequest(options=pb.VideoOptions(), data=data[:1000])
        time.sleep(3)  # the client stops sending mid-upload

    try:
        with grpc.insecure_channel(running.address) as channel, pytest.raises(grpc.RpcError) as raised:
            list(pb_grpc.EncoderStub(channel).EncodeVideo(stalling(), timeout=30))
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "upload stalled" in raised.value.details()
    finally:
        running.stop()
