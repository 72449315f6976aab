"""A corpus of damaged and unusual videos, made here: each one ends either complete and exact (the
frames of an independent decode, the in-process model's embeddings of them) or `failed` with its
reason, the same way on two runs, through `vidlstm encode-video` and through EncodeVideo."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ServerThread, reference_embeddings
from videos import decode_reference, frame_image, ts_cuts, write_audio_only, write_video

from vidlstm.clients import EncoderClient, VidlstmError
from vidlstm.models import InferenceModel, PixelFormat
from vidlstm.models.video import decode_video
from vidlstm.service import ServerSettings
from vidlstm.tools.batch.cli import encode_video_main

SIZE = {"width": 64, "height": 48}
NOT_READABLE = "not a readable video"
TRUNCATED = "damaged video: truncated"


def _cut(source: Path, fraction: float) -> Callable[[Path], object]:
    """Writes the first `fraction` of `source` (a negative fraction: all but that many bytes)."""

    def make(path: Path) -> None:
        data = source.read_bytes()
        end = len(data) + int(fraction) if fraction < 0 else int(len(data) * fraction)
        path.write_bytes(data[:end])

    return make


def _ts_cut(source: Path, before: str) -> Callable[[Path], object]:
    """Writes MPEG-TS `source` up to the first packet boundary past its middle that falls `before`
    a video packet of that kind (see `ts_cuts`)."""

    def make(path: Path) -> None:
        data = source.read_bytes()
        path.write_bytes(data[: next(at for at in ts_cuts(source)[before] if at > len(data) // 2)])

    return make


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    """The corpus folder and, per file, the reason it must fail with (None: it must come out whole)."""
    sources = tmp_path_factory.mktemp("sources")
    faststart = write_video(sources / "faststart.mp4", frames=60, faststart=True, **SIZE)
    index_last = write_video(sources / "index_last.mp4", frames=60, **SIZE)
    webm = write_video(sources / "clip.webm", codec="libvpx-vp9", frames=30, **SIZE)
    # Keyframes every 10 frames, at 160x120: they span several 188-byte packets.
    ts = write_video(sources / "clip.ts", frames=30, width=160, height=120, keyframe_every=10)
    cases: dict[str, tuple[Callable[[Path], object], str | None]] = {
        "faststart.mp4": (lambda p: write_video(p, frames=60, faststart=True, **SIZE), None),
        "one_frame.mp4": (lambda p: write_video(p, frames=1, **SIZE), None),
        "vfr.mkv": (lambda p: write_video(p, times_ms=[0, 40, 50, 200, 210, 500, 530, 900], **SIZE), None),
        "rotated.mp4": (lambda p: write_video(p, frames=10, rotation=90, **SIZE), None),
        "odd_317x211.mp4": (
            lambda p: write_video(p, frames=5, width=317, height=211, pixel_format="yuv444p"),
            None,
        ),
        "ep.1.mp4": (lambda p: write_video(p, frames=6, first_image=10, **SIZE), None),
        "ep.2.mp4": (lambda p: write_video(p, frames=7, first_image=20, **SIZE), None),
        "clip.mp4": (lambda p: write_video(p, frames=8, first_image=30, **SIZE), None),
        "clip.mkv": (lambda p: write_video(p, frames=9, first_image=40, **SIZE), None),
        "clip.webm": (lambda p: p.write_bytes(webm.read_bytes()), None),
        "cut_faststart_30.mp4": (_cut(faststart, 0.3), TRUNCATED),
        "cut_faststart_50.mp4": (_cut(faststart, 0.5), TRUNCATED),
        "cut_faststart_90.mp4": (_cut(faststart, 0.9), TRUNCATED),
        "cut_faststart_last_byte.mp4": (_cut(faststart, -1), TRUNCATED),
        "cut_index_last_50.mp4": (_cut(index_last, 0.5), f"{NOT_READABLE} ("),
        "cut_index_last_90.mp4": (_cut(index_last, 0.9), f"{NOT_READABLE} ("),
        "cut_half.webm": (_cut(webm, 0.5), "damaged video: matroska,webm: File ended prematurely"),
        "clip.ts": (lambda p: p.write_bytes(ts.read_bytes()), None),
        "cut_ts_in_packet.ts": (
            _cut(ts, -100),
            f"{TRUNCATED} MPEG-TS: {ts.stat().st_size - 100:,} bytes is not a whole number of 188-byte "
            "packets",
        ),
        "cut_ts_in_frame.ts": (_ts_cut(ts, "middle"), "damaged video: h264: error while decoding MB"),
        "cut_ts_end_of_frame.ts": (_ts_cut(ts, "last"), "damaged video: h264: error while decoding MB"),
        # MPEG-TS has no index: cut where a frame ends, it is a shorter recording, whole and exact.
        "cut_ts_at_frame_end.ts": (_ts_cut(ts, "first"), None),
        "empty.mp4": (lambda p: p.write_bytes(b""), NOT_READABLE),
        "text.mp4": (lambda p: p.write_text("not a video\n" * 20), NOT_READABLE),
        "audio_only.mp4": (write_audio_only, "has no video stream"),
    }
    root = tmp_path_factory.mktemp("corpus")
    for name, (make, _) in cases.items():
        make(root / name)
    return root, {name: reason for name, (_, reason) in cases.items()}


@pytest.fixture(scope="module")
def corpus_server(
    corpus: tuple[Path, dict[str, str | None]], model: InferenceModel
) -> Iterator[ServerThread]:
    running = ServerThread(ServerSettings(port=0, video_root=corpus[0], video_chunk_frames=16), model)
    yield running
    running.stop()


def _cli_outcomes(root: Path, out: Path) -> dict[str, tuple[str, object]]:
    """Per file: ("ok", (embeddings, timestamps, frame indices)) or ("failed", the error)."""
    assert encode_video_main(["--quiet", str(root), "--out", str(out)]) == 1
    outcomes: dict[str, tuple[str, object]] = {}
    for record in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()):
        name = Path(record["source"]).name
        if record["status"] == "ok":
            with np.load(out / f"{name}.npz") as saved:
                columns = (saved["embeddings"], saved["timestamps_ms"], saved["frame_indices"])
            outcomes[name] = ("ok", columns)
        else:
            assert record["status"] == "failed", record
            assert not list(out.glob(f"{name}.*")), f"{name} failed but left an output"
            outcomes[name] = ("failed", record["error"])
    return outcomes


def _rpc_outcomes(address: str, names: list[str]) -> dict[str, tuple[str, object]]:
    outcomes: dict[str, tuple[str, object]] = {}
    with EncoderClient(address) as client:
        for name in names:
            try:
                parts = list(client.encode_video(name, server_path=True))
            except VidlstmError as error:
                outcomes[name] = ("failed", f"{error.code.name}: {error}")
                continue
            body = parts[:-1]  # the last part is the summary
            columns = (
                [p.embeddings for p in body],
                [p.timestamps_ms for p in body],
                [p.frame_indices for p in body],
            )
            outcomes[name] = ("ok", tuple(np.concatenate(column) for column in columns))
    return outcomes


def _same(first: dict[str, tuple[str, object]], second: dict[str, tuple[str, object]]) -> None:
    """The same outcomes, frames and reasons; embeddings within 1e-5, as which videos share a
    model call (parallel decoders finish in any order) changes the CPU kernels' rounding."""
    assert first.keys() == second.keys()
    for name, (status, value) in first.items():
        assert second[name][0] == status, name
        if status == "failed":
            assert second[name][1] == value, name
        else:
            (embeddings, *frames), (again, *frames_again) = value, second[name][1]  # type: ignore[misc]
            np.testing.assert_allclose(embeddings, again, atol=1e-5, rtol=0, err_msg=name)
            for a, b in zip(frames, frames_again, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=name)


def _check(
    outcomes: dict[str, tuple[str, object]],
    root: Path,
    expected: dict[str, str | None],
    model: InferenceModel,
) -> None:
    """Complete and exact against an independent decode, or failed with the expected reason."""
    assert outcomes.keys() == expected.keys()
    for name, reason in expected.items():
        status, value = outcomes[name]
        if reason is not None:
            assert status == "failed", f"{name} should fail with {reason!r}, was {status}"
            assert reason in str(value), name
            continue
        assert status == "ok", f"{name} should come out whole: {value}"
        embeddings, times, indices = value  # type: ignore[misc]
        frames, reference_times = decode_reference(root / name, gray=True)  # the gray model's frames
        assert list(indices) == list(range(len(frames))), name
        np.testing.assert_allclose(times, reference_times, atol=1e-6, err_msg=name)
        want = reference_embeddings(model, frames, PixelFormat.GRAY)
        np.testing.assert_allclose(embeddings, want, atol=1e-4, rtol=0, err_msg=name)


def test_every_video_is_whole_or_failed_with_its_reason_on_the_cli(
    corpus: tuple[Path, dict[str, str | None]], model: InferenceModel, tmp_path: Path
) -> None:
    root, expected = corpus
    first = _cli_outcomes(root, tmp_path / "first")
    _same(first, _cli_outcomes(root, tmp_path / "second"))
    _check(first, root, expected, model)
    whole = sorted(f"{name}.npz" for name, reason in expected.items() if reason is None)
    assert sorted(p.name for p in (tmp_path / "first").glob("*.npz")) == whole


def test_every_video_is_whole_or_failed_with_its_reason_on_encode_video(
    corpus: tuple[Path, dict[str, str | None]], model: InferenceModel, corpus_server: ServerThread
) -> None:
    root, expected = corpus
    first = _rpc_outcomes(corpus_server.address, sorted(expected))
    _same(first, _rpc_outcomes(corpus_server.address, sorted(expected)))
    _check(first, root, expected, model)
    failures = [str(error) for status, error in first.values() if status == "failed"]
    assert all(error.startswith("INVALID_ARGUMENT: ") for error in failures), failures


def test_rotation_metadata_is_applied(corpus: tuple[Path, dict[str, str | None]]) -> None:
    first = next(decode_video(corpus[0] / "rotated.mp4")).image  # stored 64x48, shown 48 wide
    assert first.shape == (64, 48, 3)
    error = np.abs(first.astype(float) - np.rot90(frame_image(0, 64, 48), k=1)).mean()
    assert error < 5, "not turned as the display matrix says (90 degrees counter-clockwise)"


def test_mpeg_ts_cut_where_a_frame_ends_reads_as_a_shorter_recording(
    corpus: tuple[Path, dict[str, str | None]],
) -> None:
    """What cannot be detected: with no index and no frame count, the cut file is a valid one."""
    whole = len(decode_reference(corpus[0] / "clip.ts")[0])
    cut = len(list(decode_video(corpus[0] / "cut_ts_at_frame_end.ts")))
    assert (whole, 0 < cut < whole) == (30, True)
