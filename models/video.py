"""Video decoding into RGB frames with exact presentation timestamps and frame sampling.

Two backends: PyAV (FFmpeg; exact timestamps from the stream's pts, rotation metadata applied) and
OpenCV (timestamps from CAP_PROP_POS_MSEC). Frames are decoded from the start and counted, so
frame indices are exact even for containers whose frame count is wrong or missing; sampling by
`every`, `fps` (on presentation timestamps, no re-encode), `start_s`/`end_s` and `max_frames`.

A damaged video fails as a whole (VideoError), never as a shorter list of frames: PyAV reports
truncation and decoding errors (an index past the end of the file, an MPEG-TS file that is not a
whole number of packets, a packet cut short, a frame the decoder had to conceal, an error the
demuxer or decoder logged, on any of the decoder's threads). OpenCV reports none of these: a
truncated file simply ends early there. MPEG-TS has no index: it is decoded on one thread, the
only way FFmpeg conceals (and flags) a frame cut short, and a file cut exactly where a frame's
packets end looks like a shorter recording and cannot be told from one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from vidlstm.selection import FrameSelection

from .spec import PixelFormat

__all__ = ["DECODERS", "DecodedFrame", "VideoError", "VideoInfo", "decode_video", "probe_video"]

DECODERS = ("pyav", "opencv")
# MPEG-TS layouts FFmpeg reads: (packet size, offset of the 0x47 sync byte in a packet): plain,
# M2TS (a 4-byte timestamp first), and with 16 bytes of error correction after each packet.
_TS_LAYOUTS = ((188, 0), (192, 4), (204, 0))
_TS_SYNC = 0x47
# Held by the one decode call whose capture takes the logs of every thread (see `_worker_logs`).
_ALL_THREADS_CAPTURE = threading.Lock()
# 8-bit pixel formats whose first plane is the luma (Y'), and the colour matrices (AVColorSpace)
# whose RGB, turned gray with BT.601's weights as `prepare_frames` does, is that luma again: BT.601's
# own (BT470BG, SMPTE170M) and "unspecified", which FFmpeg converts as BT.601.
_LUMA_FIRST = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv440p", "yuvj440p", "yuv444p", "yuvj444p"}
_LUMA_FIRST |= {"nv12", "nv21"}
_BT601_MATRICES = {2, 5, 6}
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG; anything else is converted as limited range (16-235), as FFmpeg does
_LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)


class VideoError(ValueError):
    """A video that cannot be read; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float  # average frame rate as the container states it (0 when unknown)
    declared_frames: int  # from the container; may be 0 or wrong
    duration_s: float
    codec: str


@dataclass(frozen=True)
class DecodedFrame:
    image: np.ndarray  # uint8 [H, W, 3] RGB or, decoded with `gray`, [H, W, 1] gray; rotated for display
    timestamp_ms: float  # presentation time from the stream's start
    index: int  # position among all decoded frames of the video

    @property
    def pixel_format(self) -> PixelFormat:
        return PixelFormat.GRAY if self.image.shape[2] == 1 else PixelFormat.RGB


class _Sampler:
    """Keeps frames by index or by presentation time; says when nothing more can be kept."""

    def __init__(self, sampling: FrameSelection) -> None:
        self.sampling = sampling
        self.kept = 0
        self.next_time = sampling.start_s

    def done(self, time_s: float) -> bool:
        s = self.sampling
        return (s.end_s is not None and time_s >= s.end_s) or (
            s.max_frames is not None and self.kept >= s.max_frames
        )

    def keep(self, index: int, time_s: float) -> bool:
        s = self.sampling
        if time_s < s.start_s - 1e-9:
            return False
        if s.fps is not None:
            if time_s + 1e-9 < self.next_time:
                return False
            period = 1.0 / s.fps
            self.next_time += period * (math.floor((time_s - self.next_time) / period + 1e-9) + 1)
        elif index % s.every:
            return False
        self.kept += 1
        return True


def probe_video(path: Path) -> VideoInfo:
    try:
        with _open(path) as container:
            stream = _video_stream(container, path)
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
            if not duration and container.duration:
                duration = container.duration / 1_000_000
            return VideoInfo(
                stream.width, stream.height, rate, stream.frames, duration, stream.codec_context.name
            )
    except av.error.FFmpegError as error:
        raise VideoError(f"{path}: not a readable video ({error})") from None


def decode_video(
    path: Path,
    sampling: FrameSelection | None = None,
    *,
    backend: str = "pyav",
    threads: int = 0,
    gray: bool = False,
) -> Iterator[DecodedFrame]:
    """Yields the sampled frames of `path` in presentation order; raises VideoError on bad data.

    `gray` (PyAV): frames whose luma plane is their gray come as that plane, range-expanded (no
    conversion to RGB and back); the others, and OpenCV's, as RGB (see `_luma`)."""
    sampling = sampling or FrameSelection()
    if backend == "pyav":
        return _decode_pyav(path, sampling, threads, gray)
    if backend == "opencv":
        return _decode_opencv(path, sampling, threads)
    raise ValueError(f"unknown decoder {backend!r}; use one of {', '.join(DECODERS)}")


def _decode_pyav(path: Path, sampling: FrameSelection, threads: int, gray: bool) -> Iterator[DecodedFrame]:
    sampler = _Sampler(sampling)
    try:
        with _open(path) as container:
            stream = _video_stream(container, path)
            _check_index(container, path)
            _check_ts_size(container, path)
            # Frame threading drops a frame the decoder fails on instead of raising (how many
            # depends on timing); slice threading logs every error (on its own threads).
            stream.thread_type = "SLICE"
            # MPEG-TS has no index: a last frame cut short shows only in the decoder's error
            # concealment, which FFmpeg runs (and flags on the frame) on one thread only.
            threads = 1 if container.format.name == "mpegts" else threads
            stream.thread_count = threads
            origin = stream.start_time or 0
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            decoded = 0
            for frame in _checked_frames(container, stream, path, threads):
                if frame.pts is not None:
                    time_s = float((frame.pts - origin) * stream.time_base)
                else:
                    time_s = decoded / rate if rate else 0.0
                if sampler.done(time_s):
                    return
                if sampler.keep(decoded, time_s):
                    image = _luma(frame) if gray else None
                    if image is None:
                        image = frame.to_ndarray(format="rgb24")
                    if frame.rotation:
                        image = np.ascontiguousarray(np.rot90(image, k=round(frame.rotation / 90)))
                    yield DecodedFrame(image, time_s * 1000.0, decoded)
                decoded += 1
            if not decoded:
                raise VideoError(f"{path}: damaged video: its video stream has no decodable frame")
    except av.error.FFmpegError as error:
        raise VideoError(f"{path}: corrupt or unreadable video ({error})") from None


def _luma(frame: Any) -> np.ndarray | None:
    """The frame's gray [H, W, 1] from its luma plane, expanded to full range (0-255) when stored
    in limited range (16-235), as FFmpeg's RGB is; None where that would not be the gray of its
    RGB: another matrix (BT.709, BT.2020: their chroma adds to BT.601's gray) or no 8-bit luma plane.
    It can differ from the RGB path's gray by a few levels: FFmpeg rounds its RGB (4:2:0 measured
    ~1.3 levels darker on average), and RGB clips saturated colours where the luma does not."""
    if frame.format.name not in _LUMA_FIRST or frame.colorspace not in _BT601_MATRICES:
        return None
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
    if frame.color_range == _FULL_RANGE or frame.format.name.startswith("yuvj"):
        return np.ascontiguousarray(luma)[..., None]
    return cv2.LUT(luma, _LIMITED_TO_FULL)[..., None]


def _open(path: Path) -> Any:
    """Opens `path` with FFmpeg's error messages on, so that errors carry FFmpeg's reason and reach
    `av.logging.Capture` (PyAV drops all logs by default). Every one of them: dropping repeats would
    hide a second video's error, identical to the first's, from its capture."""
    if av.logging.get_level() is None:
        av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)
    with av.logging.Capture():  # probing decodes a few packets: decoding reports those errors again
        return av.open(str(path))


def _check_index(container: Any, path: Path) -> None:
    """A truncated mp4 with its index first still lists every sample; the demuxer stops at the
    first one past the end of the file as if the video ended there, so look before decoding."""
    size = path.stat().st_size
    end = max((e.pos + e.size for s in container.streams for e in s.index_entries), default=0)
    if end > size:
        raise VideoError(
            f"{path}: damaged video: truncated, its index points to byte {end:,} of a {size:,}-byte file"
        )


def _check_ts_size(container: Any, path: Path) -> None:
    """MPEG-TS has no index, and its demuxer drops a last packet cut short without a word, so the
    video would end early: a file that stops inside a packet is truncated. The packet size is read
    from the sync bytes at the start; a file that does not start with a packet is not checked."""
    if container.format.name != "mpegts":
        return
    with open(path, "rb") as file:
        head = file.read(8 * max(packet for packet, _ in _TS_LAYOUTS))  # eight packets of any layout
    size = path.stat().st_size
    for packet, sync in _TS_LAYOUTS:
        starts = range(sync, len(head), packet)
        if len(starts) > 1 and all(head[at] == _TS_SYNC for at in starts):
            if size % packet:
                raise VideoError(
                    f"{path}: damaged video: truncated MPEG-TS: {size:,} bytes is not a whole number "
                    f"of {packet}-byte packets"
                )
            return


@contextmanager
def _worker_logs(threads: int) -> Iterator[list[tuple[int, str, str]]]:
    """What FFmpeg's slice threads log while a packet is decoded. They log a frame's errors on
    their own threads, which a thread-local capture misses (and whether a slice is decoded on the
    calling thread or a worker is a race), so with more than one decoder thread the capture takes
    the logs of every thread, one decode call at a time in this process: no other video's errors
    can land in it. One decoder thread logs on the calling thread only, and needs no lock."""
    if threads == 1:
        yield []
        return
    with _ALL_THREADS_CAPTURE, av.logging.Capture(local=False) as logs:
        yield logs


def _checked_frames(container: Any, stream: Any, path: Path, threads: int) -> Iterator[Any]:
    """The decoded frames of `stream`; a packet cut short, a frame the decoder had to conceal or an
    error FFmpeg reported while reading raises VideoError rather than quietly losing frames."""
    packets = container.demux(stream)
    while True:
        # One capture per packet, never open across a yield: the next packet may be read on
        # another thread (the server's decoder pool), and captures belong to a thread.
        with av.logging.Capture() as logs, _worker_logs(threads) as worker_logs:
            try:
                packet = next(packets, None)
                frames = packet.decode() if packet is not None else []
            except av.error.FFmpegError as error:
                raise VideoError(f"{path}: damaged video: {_errors(logs + worker_logs) or error}") from None
        if problem := _damage(packet, frames) or _errors(logs + worker_logs):
            raise VideoError(f"{path}: damaged video: {problem}")
        if packet is None:
            return
        yield from frames


def _damage(packet: Any, frames: list[Any]) -> str:
    """What the demuxer or decoder flagged in one packet and its frames ("" when nothing)."""
    if packet is not None and packet.is_corrupt:
        return f"the packet at byte {packet.pos} is incomplete (truncated or damaged file)"
    if any(frame.is_corrupt for frame in frames):
        return "the decoder found errors in a frame"
    return ""


def _errors(logs: list[tuple[int, str, str]], most: int = 3) -> str:
    """The first errors FFmpeg logged ("" when none)."""
    errors = (
        f"{name}: {text.strip()}" if name else text.strip()
        for level, name, text in logs
        if level <= av.logging.ERROR
    )
    return "; ".join(list(dict.fromkeys(errors))[:most])


def _decode_opencv(path: Path, sampling: FrameSelection, threads: int) -> Iterator[DecodedFrame]:
    import cv2

    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
    if not capture.isOpened():
        raise VideoError(f"{path}: not a readable video")
    sampler = _Sampler(sampling)
    try:
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                return
            time_s = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if sampler.done(time_s):
                return
            if sampler.keep(index, time_s):
                yield DecodedFrame(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), time_s * 1000.0, index)
            index += 1
    finally:
        capture.release()


def _video_stream(container: Any, path: Path) -> Any:
    streams = container.streams.video
    if not streams:
        raise VideoError(f"{path}: has no video stream")
    return streams[0]
