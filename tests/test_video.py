"""Video files -> embeddings: the CLI (in process and remote), the EncodeVideo RPC and Encode on
the same decoded frames agree; sampling, resumability, failures and path confinement."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ServerThread, reference_embeddings
from videos import decode_reference, ts_cuts, write_video

from vidlstm.clients import EncoderClient, FrameSelection, VidlstmError
from vidlstm.models import InferenceModel, PixelFormat, prepare_frames
from vidlstm.models.video import VideoError, decode_video
from vidlstm.service import ServerSettings
from vidlstm.tools.batch.cli import encode_video_main
from vidlstm.tools.batch.inputs import InputError, expand_inputs
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.wire import selection_from_proto, tensor_from_proto

VFR_TIMES = [0, 40, 50, 200, 210, 215, 500, 530, 900]
# The gray model's embeddings from the luma plane vs from RGB turned gray (see README, Video files).
LUMA_TOLERANCE = 1e-3
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


def _decoded(
    path: Path, sampling: FrameSelection | None = None, *, gray: bool = False
) -> tuple[np.ndarray, list[float], list[int]]:
    frames = list(decode_video(path, sampling, gray=gray))
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
            saved = np.load(tmp_path / f"{path.relative_to(root)}.npz")
            frames, times, indices = _decoded(path, gray=True)  # the gray model takes the luma
            direct = client.encode(frames, pixel_format="GRAY").embeddings
            uploaded, uploaded_times = _via_rpc(client, path)
            np.testing.assert_allclose(saved["embeddings"], direct, atol=1e-4, rtol=0, err_msg=name)
            np.testing.assert_allclose(uploaded, direct, atol=1e-4, rtol=0, err_msg=name)
            from_rgb = client.encode(_decoded(path)[0], pixel_format="RGB").embeddings  # the RGB path
            np.testing.assert_allclose(
                saved["embeddings"], from_rgb, atol=LUMA_TOLERANCE, rtol=0, err_msg=name
            )
            np.testing.assert_allclose(saved["timestamps_ms"], times)
            assert uploaded_times == times
            assert saved["frame_indices"].tolist() == indices
            metadata = json.loads(str(saved["metadata"]))
            assert metadata["weights_hash"] == client.info().weights_hash
            assert metadata["source"] == str(path)
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in records) == ["ok"] * len(videos)


def test_fps_sampling_picks_presentation_times(videos: dict[str, Path], video_server: ServerThread) -> None:
    _, times, indices = _decoded(videos["h264"], FrameSelection(fps=10))
    assert times == pytest.approx([100.0 * k for k in range(14)])  # 40 frames at 30 fps
    assert indices == [3 * k for k in range(14)]
    assert _decoded(videos["vfr"], FrameSelection(fps=10))[1] == [
        0,
        200,
        500,
        900,
    ]  # first frame at/after each 0.1 s
    assert _decoded(videos["vfr"], FrameSelection(start_s=0.2, end_s=0.6))[1] == [200, 210, 215, 500, 530]
    assert _decoded(videos["vfr"], FrameSelection(every=3, max_frames=2))[2] == [0, 3]
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
    assert video_server.live_envs == 0


def test_a_video_with_no_frames_selected_returns_zero_state(
    videos: dict[str, Path], video_server: ServerThread
) -> None:
    """Nothing sampled (the video ends before `start_s`): no embeddings and the zero state, never the
    state a reused slot's previous owner left."""
    with EncoderClient(video_server.address) as client:
        list(client.encode_video("h264.mp4", server_path=True))  # leaves state in a slot it releases
        parts = list(
            client.encode_video("h264.mp4", FrameSelection(start_s=3600), server_path=True, return_state=True)
        )
    assert [len(p.embeddings) for p in parts[:-1]] == []
    assert parts[-1].summary is not None
    assert parts[-1].summary.frames == 0
    assert parts[-1].final_state is not None
    for tensor in parts[-1].final_state.tensors.values():
        np.testing.assert_array_equal(tensor, np.zeros_like(tensor))


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
    (inputs / "empty.mp4").write_bytes(b"")
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
        "empty.mp4": "failed",
    }
    assert "not a readable video" in records["garbage.mp4"]["error"]
    assert "empty upload: the video file has no bytes" in records["empty.mp4"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["good.mp4.parquet", "manifest.jsonl"]


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
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.npz" for n in names] + ["manifest.jsonl"])


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
    (tmp_path / "a" / "x.webm").write_bytes(b"")  # same stem, another name: its own output
    assert len(expand_inputs([str(tmp_path / "a")])) == 3
    (tmp_path / "a" / "b" / "z.avi").write_bytes(b"")
    with pytest.raises(InputError, match=r"would both write z\.avi\.\* under --out"):
        expand_inputs([str(tmp_path / "a" / "b" / "z.avi"), str(tmp_path / "z.avi")])
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


def _encode_cli(*args: str) -> int:
    """`vidlstm encode-video --quiet ARGS` run through its main function, in this process."""
    return encode_video_main(["--quiet", *args])


def _records(out: Path) -> dict[str, dict[str, object]]:
    """The manifest's latest record per source file name."""
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {Path(r["source"]).name: r for r in map(json.loads, lines)}


def _saved_embeddings(out: Path, name: str, fmt: str) -> np.ndarray:
    if fmt == "npz":
        with np.load(out / f"{name}.npz") as saved:
            return saved["embeddings"]
    if fmt == "npy":
        assert json.loads((out / f"{name}.json").read_text())["source"].endswith(name)
        return np.load(out / f"{name}.npy")
    return np.stack(pq.read_table(out / f"{name}.parquet").column("embedding").to_pylist())


def _expected(model: InferenceModel, path: Path) -> np.ndarray:
    """The in-process (gray) model on the frames of an independent decode, FFmpeg's gray."""
    return reference_embeddings(model, decode_reference(path, gray=True)[0], PixelFormat.GRAY)


@pytest.mark.parametrize(
    ("fmt", "suffixes"), [("npz", [".npz"]), ("npy", [".npy", ".json"]), ("parquet", [".parquet"])]
)
def test_output_names_keep_the_whole_file_name(
    model: InferenceModel, tmp_path: Path, fmt: str, suffixes: list[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    clips = {  # with_suffix("") mapped each pair to one output: the second overwrote the first
        name: write_video(inputs / name, frames=4 + 2 * k, width=64, height=48, first_image=40 * k)
        for k, name in enumerate(["ep.1.mp4", "ep.2.mp4", "clip.mp4", "clip.mkv"])
    }
    out = tmp_path / "out"
    assert _encode_cli(str(inputs), "--out", str(out), "--format", fmt) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}{suffix}" for name in clips for suffix in suffixes] + ["manifest.jsonl"]
    )
    for name, path in clips.items():
        saved = _saved_embeddings(out, name, fmt)
        np.testing.assert_allclose(saved, _expected(model, path), atol=1e-4, rtol=0, err_msg=name)


def test_one_output_name_for_two_inputs_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_video(tmp_path / "a" / "clip.mp4", frames=2)
    second = write_video(tmp_path / "b" / "clip.mp4", frames=3)
    out = tmp_path / "out"
    result = subprocess.run(
        [*CLI, str(first), str(second), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert f"{first} and {second} would both write clip.mp4.* under --out" in result.stderr
    assert not out.exists()


def _damaged_packet(path: Path, index: int) -> Path:
    """Overwrites the length prefix of the `index`-th H.264 packet: its decoder must fail on it,
    while the container (sizes, index) stays intact."""
    with av.open(str(path)) as container:
        packet = next(p for k, p in enumerate(container.demux(video=0)) if k == index)
        position = packet.pos
    data = bytearray(path.read_bytes())
    data[position : position + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    return path


def test_truncated_and_damaged_videos_fail_whole_on_cli_and_rpc(
    model: InferenceModel, video_server: ServerThread, tmp_path: Path
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    full = write_video(tmp_path / "full.mp4", frames=60, faststart=True)
    (inputs / "half.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # was ok, 24 of 60
    _damaged_packet(write_video(inputs / "bad_frame.mp4", frames=60), 30)
    reasons = {
        "half.mp4": "damaged video: truncated",
        "bad_frame.mp4": "damaged video: h264: Invalid NAL unit size",
    }
    for _ in range(2):  # the same outcome every time, whatever the decoder threads did
        assert _encode_cli(str(inputs), "--out", str(out)) == 1
        records = _records(out)
        for name, reason in reasons.items():
            assert records[name]["status"] == "failed"
            assert reason in str(records[name]["error"])
        assert [p.name for p in out.iterdir()] == ["manifest.jsonl"]
        with EncoderClient(video_server.address) as client:
            for name, reason in reasons.items():
                with pytest.raises(VidlstmError, match=reason) as raised:
                    list(client.encode_video(inputs / name))
                assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    full_frames, _, _ = _decoded(full, gray=True)
    assert len(full_frames) == 60
    for threads in (1, 2, 4):  # decoder threads change nothing, damaged or whole
        with pytest.raises(VideoError, match="damaged video: h264: Invalid NAL unit size"):
            list(decode_video(inputs / "bad_frame.mp4", threads=threads))
        decoded = [f.image for f in decode_video(full, threads=threads, gray=True)]
        np.testing.assert_array_equal(decoded, full_frames)
    np.testing.assert_allclose(
        reference_embeddings(model, full_frames, PixelFormat.GRAY), _expected(model, full), atol=1e-4, rtol=0
    )


BAD_OPTIONS = [
    (pb.VideoOptions(fps=math.inf), "fps must be a number > 0"),
    (pb.VideoOptions(fps=math.nan), "fps must be a number > 0"),
    (pb.VideoOptions(fps=-5), "fps must be a number > 0"),
    (pb.VideoOptions(start_s=math.nan), "start_s must be a finite number"),
    (pb.VideoOptions(start_s=-1), "start_s must be a finite number"),
    (pb.VideoOptions(end_s=math.inf), "end_s must be a finite number"),
    (pb.VideoOptions(start_s=2, end_s=1), r"end_s must be .* after start_s \(2.0\), got 1.0"),
    (pb.VideoOptions(every=2, fps=10), "use either every"),
]


def _raw_encode_video(address: str, options: pb.VideoOptions, path: str) -> list[pb.VideoResponse]:
    """EncodeVideo through the bare stub, so that options the client would refuse reach the server."""
    with grpc.insecure_channel(address) as channel:
        request = pb.VideoRequest(options=options, path=path)
        return list(pb_grpc.EncoderStub(channel).EncodeVideo(iter([request]), timeout=60))


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_video_options_are_invalid_argument(
    video_server: ServerThread, options: pb.VideoOptions, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _raw_encode_video(video_server.address, options, "h264.mp4")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(f"bad VideoOptions: {message}", raised.value.details())
    with pytest.raises(ValueError, match=message):  # the client refuses them before sending
        selection_from_proto(options)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fps", "inf"], "fps must be a number > 0"),
        (["--fps", "0"], "fps must be a number > 0"),
        (["--start", "nan"], "start_s must be a finite number"),
        (["--start", "3", "--end", "3"], "end_s must be a finite number of seconds after start_s"),
        (["--end", "1e400"], "end_s must be a finite number"),
        (["--every", "0"], "every must be a whole number from 1"),
        (["--max-frames", "0"], "max_frames must be a whole number from 1"),
        (["--chunk-frames", "0"], "argument --chunk-frames: must be a whole number >= 1, got '0'"),
        (["--decoder-threads", "-1"], "argument --decoder-threads: must be a whole number >= 0"),
    ],
)
def test_bad_cli_options_are_usage_errors_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:  # the input does not exist: options are checked first
        _encode_cli(str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out"), *flags)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_chunk_frames_must_fit_in_one_message(
    model: InferenceModel, video_server: ServerThread, tmp_path: Path
) -> None:
    with pytest.raises(grpc.RpcError) as raised:  # the default limit, 64 MiB: refused up front
        _raw_encode_video(video_server.address, pb.VideoOptions(chunk_frames=1_000_000), "h264.mp4")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk_frames 1000000 would make responses larger than the server's message limit of " in (
        raised.value.details()
    )
    assert f"use chunk_frames <= {(64 * 2**20 - 1024) // (256 * 4 + 18)}" in raised.value.details()
    limit = 150_000
    running = ServerThread(ServerSettings(port=0, video_root=tmp_path, max_message_bytes=limit), model)
    video = write_video(tmp_path / "long.mp4", frames=160, width=64, height=48)
    largest = {pb.FLOAT32: (limit - 1024) // (256 * 4 + 18), pb.FLOAT16: (limit - 1024) // (256 * 2 + 18)}
    try:
        for dtype, frames in largest.items():
            options = pb.VideoOptions(chunk_frames=frames + 1, embedding_dtype=dtype)
            with pytest.raises(grpc.RpcError) as raised:
                _raw_encode_video(running.address, options, "long.mp4")
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"use chunk_frames <= {frames}" in raised.value.details()
        options = pb.VideoOptions(chunk_frames=largest[pb.FLOAT32])  # 142 frames: fits, just
        responses = _raw_encode_video(running.address, options, "long.mp4")
    finally:
        running.stop()
    assert [len(r.frame_indices) for r in responses[:-1]] == [142, 18]
    assert max(r.ByteSize() for r in responses) <= limit
    embeddings = np.concatenate([tensor_from_proto(r.embeddings) for r in responses[:-1]])
    np.testing.assert_allclose(embeddings, _expected(model, video), atol=1e-4, rtol=0)


def test_rerun_encodes_a_changed_source_again(model: InferenceModel, tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    source = write_video(inputs / "clip.mp4", frames=8, width=64, height=48)
    assert _encode_cli(str(inputs), "--out", str(out)) == 0
    first = _saved_embeddings(out, "clip.mp4", "npz")
    assert _encode_cli(str(inputs), "--out", str(out)) == 0
    assert _records(out)["clip.mp4"]["status"] == "skipped"
    write_video(source, frames=12, width=64, height=48, first_image=30)  # same name, new content
    assert _encode_cli(str(inputs), "--out", str(out)) == 0
    record = _records(out)["clip.mp4"]
    assert (record["status"], record["frames"]) == ("ok", 12)
    assert record["source_stamp"]["size_bytes"] == source.stat().st_size  # type: ignore[index]
    second = _saved_embeddings(out, "clip.mp4", "npz")
    assert (len(first), len(second)) == (8, 12)
    np.testing.assert_allclose(second, _expected(model, source), atol=1e-4, rtol=0)


def test_save_state_writes_the_final_lstm_state(
    videos: dict[str, Path], model: InferenceModel, tmp_path: Path
) -> None:
    """`--save-state`: `state_h`/`state_c` are the in-process model's state after the last frame."""
    path = videos["h264"]
    assert _encode_cli(str(path), "--out", str(tmp_path), "--save-state") == 0
    frames, _, _ = _decoded(path, gray=True)
    prepared = prepare_frames(frames, PixelFormat.GRAY, model.model.spec.input)
    _, state = model.encode(prepared[:, None])
    with np.load(tmp_path / f"{path.name}.npz") as saved:
        for name in ("h", "c"):
            np.testing.assert_allclose(saved[f"state_{name}"], state[name][:, 0].numpy(), atol=1e-4, rtol=0)


def test_a_video_that_now_fails_loses_its_earlier_output(tmp_path: Path) -> None:
    """A rerun after the source was damaged: `failed`, exit 1, and no stale output left behind."""
    (tmp_path / "in").mkdir()
    source = write_video(tmp_path / "in" / "clip.mp4", frames=20, width=64, height=48)
    out = tmp_path / "out"
    assert _encode_cli(str(source), "--out", str(out)) == 0
    assert (out / "clip.mp4.npz").is_file()
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    assert _encode_cli(str(source), "--out", str(out)) == 1
    assert _records(out)["clip.mp4"]["status"] == "failed"
    assert not (out / "clip.mp4.npz").exists()


def test_outputs_named_without_the_extension_are_not_reused(tmp_path: Path) -> None:
    """Outputs of earlier versions (`clip.npz`) are neither read nor overwritten: the video is encoded
    again into `clip.mp4.npz`."""
    (tmp_path / "in").mkdir()
    source = write_video(tmp_path / "in" / "clip.mp4", frames=10, width=64, height=48)
    out = tmp_path / "out"
    out.mkdir()
    old = out / "clip.npz"
    old.write_bytes(b"an output of an earlier version")
    assert _encode_cli(str(source), "--out", str(out)) == 0
    assert _records(out)["clip.mp4"]["status"] == "ok"
    assert old.read_bytes() == b"an output of an earlier version"
    with np.load(out / "clip.mp4.npz") as saved:
        assert saved["embeddings"].shape == (10, 256)


def test_decoder_errors_on_slice_threads_fail_the_video(tmp_path: Path) -> None:
    """A raw H.264 stream has no index and no sizes: cut inside a frame, only the decoder sees it,
    and with slice threads it logs the error on one of its own threads, where it was lost."""
    data = write_video(tmp_path / "clip.h264", frames=30, width=160, height=120, textured=True).read_bytes()
    cut = tmp_path / "cut.h264"
    for fraction in (0.5, 0.9):
        cut.write_bytes(data[: int(len(data) * fraction)])
        for threads in (1, 0, 2, 4):
            with pytest.raises(VideoError, match="damaged video: h264: error while decoding MB"):
                list(decode_video(cut, threads=threads))


def test_mpeg_ts_cut_inside_a_frame_fails_whatever_the_decoder_threads(tmp_path: Path) -> None:
    """MPEG-TS has no index: a cut at a packet boundary that loses a packet of a frame shows only in
    the decoder, which conceals the frame (and flags it) on one thread only."""
    source = write_video(tmp_path / "clip.ts", frames=30, width=160, height=120, textured=True)
    data, cut = source.read_bytes(), tmp_path / "cut.ts"
    for at in ts_cuts(source)["middle"]:
        cut.write_bytes(data[:at])
        for threads in (0, 2):
            with pytest.raises(VideoError, match="damaged video: "):
                list(decode_video(cut, threads=threads))


def test_an_output_written_for_another_source_is_neither_reused_nor_overwritten(
    model: InferenceModel, tmp_path: Path
) -> None:
    """Two sources with one name, encoded into one --out in separate runs: the second is refused, and
    the first, run again, is skipped with its own embeddings still there."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_video(tmp_path / "a" / "clip.mp4", frames=6, width=64, height=48, first_image=10)
    second = write_video(tmp_path / "b" / "clip.mp4", frames=7, width=64, height=48, first_image=50)
    out = tmp_path / "out"
    output = out / "clip.mp4.npz"
    assert _encode_cli(str(first), "--out", str(out)) == 0
    before = output.read_bytes()
    assert _encode_cli(str(second), "--out", str(out)) == 1
    record = _records(out)["clip.mp4"]
    assert (record["source"], record["status"]) == (str(second.resolve()), "failed")
    assert record["error"] == (
        f"OutputConflictError: {output.resolve()} holds the embeddings of {first.resolve()} from an earlier "
        "run; use another --out or delete it"
    )
    assert output.read_bytes() == before
    assert _encode_cli(str(first), "--out", str(out)) == 0
    assert _records(out)["clip.mp4"]["status"] == "skipped"
    output.unlink()  # as the message says: now the second may write it
    assert _encode_cli(str(second), "--out", str(out), "--format", "npy") == 0
    assert _encode_cli(str(first), "--out", str(out)) == 1  # clip.mp4.npy holds the second's
    assert not output.exists()
    assert _records(out)["clip.mp4"]["error"].startswith(  # type: ignore[union-attr]
        f"OutputConflictError: {(out / 'clip.mp4.npy').resolve()} holds the embeddings of {second.resolve()}"
    )
    np.testing.assert_allclose(
        _saved_embeddings(out, "clip.mp4", "npy"), _expected(model, second), atol=1e-4, rtol=0
    )


def test_parquet_keeps_the_final_state_in_its_metadata(videos: dict[str, Path], tmp_path: Path) -> None:
    """`--format parquet --save-state`: the `vidlstm` schema metadata holds `final_state`, the same
    state as the npz's `state_h`/`state_c`."""
    path = videos["odd"]
    for fmt in ("npz", "parquet"):
        assert _encode_cli(str(path), "--out", str(tmp_path / fmt), "--format", fmt, "--save-state") == 0
    metadata = json.loads(pq.read_schema(tmp_path / "parquet" / f"{path.name}.parquet").metadata[b"vidlstm"])
    with np.load(tmp_path / "npz" / f"{path.name}.npz") as saved:
        assert sorted(metadata["final_state"]) == ["c", "h"]
        for name, values in metadata["final_state"].items():
            np.testing.assert_array_equal(np.asarray(values, np.float32), saved[f"state_{name}"])


def test_a_failed_rerun_deletes_its_outputs_in_every_format(tmp_path: Path) -> None:
    """Outputs of earlier runs in other formats would outlive a source that now fails."""
    (tmp_path / "in").mkdir()
    source = write_video(tmp_path / "in" / "clip.mp4", frames=10, width=64, height=48)
    out = tmp_path / "out"
    for fmt in ("npy", "parquet", "npz"):
        assert _encode_cli(str(source), "--out", str(out), "--format", fmt) == 0
    assert len(list(out.glob("clip.mp4.*"))) == 4
    source.write_bytes(source.read_bytes()[:2000])
    assert _encode_cli(str(source), "--out", str(out)) == 1
    assert [p.name for p in out.iterdir()] == ["manifest.jsonl"]


def test_bad_device_is_a_usage_error(videos: dict[str, Path], tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, str(videos["h264"]), "--out", str(tmp_path / "out"), "--device", "nonsense"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("vidlstm encode-video: --device: ")
    assert "nonsense" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threads", "0"], "argument --threads: must be a whole number >= 1, got '0'"),
        (
            ["--decoder-threads", "100000"],
            "argument --decoder-threads: must be a whole number >= 0 and <= 64, got '100000'",
        ),
    ],
)
def test_thread_counts_out_of_range_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        _encode_cli(str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out"), *flags)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "validation error" not in err


def test_a_record_after_a_cut_manifest_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    source = write_video(tmp_path / "clip.mp4", frames=3, width=64, height=48)
    out = tmp_path / "out"
    out.mkdir()
    cut = '{"source": "/elsewhere/ep.mp4", "status": "o'  # a writer killed mid-line
    (out / "manifest.jsonl").write_text(cut)
    assert _encode_cli(str(source), "--out", str(out)) == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert lines[0] == cut
    assert json.loads(lines[1])["status"] == "ok"


def test_manifest_output_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded outputs hold wherever the next run (or a reader) starts, not only in this one's cwd."""
    write_video(tmp_path / "clip.mp4", frames=3, width=64, height=48)
    monkeypatch.chdir(tmp_path)
    assert _encode_cli("clip.mp4", "--out", "out", "--format", "npy") == 0
    outputs = _records(tmp_path / "out")["clip.mp4"]["outputs"]
    assert outputs == [str((tmp_path / "out" / f"clip.mp4{s}").resolve()) for s in (".npy", ".json")]


def test_save_state_with_no_frame_kept_saves_the_zero_state(
    videos: dict[str, Path], model: InferenceModel, tmp_path: Path
) -> None:
    """Nothing sampled (`--start` past the end): no embeddings, and the state at an episode's start."""
    path = videos["h264"]
    assert _encode_cli(str(path), "--out", str(tmp_path), "--start", "3600", "--save-state") == 0
    with np.load(tmp_path / f"{path.name}.npz") as saved:
        assert saved["embeddings"].shape == (0, model.model.out_size)
        for spec in model.state_specs:
            state = saved[f"state_{spec.name}"]
            np.testing.assert_array_equal(state, np.zeros(spec.shape, spec.numpy_dtype))
