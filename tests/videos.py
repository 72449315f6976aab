"""Real encoded test videos, written with PyAV (FFmpeg) in fixtures."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

TS_PACKET = 188


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """A moving bar on a changing background: frames differ, so embeddings differ."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = (index * 7) % 256
    image[..., 2] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    x = (index * 5) % max(width - 12, 1)
    image[height // 4 : height // 2, x : x + 12] = 255
    return image


def write_video(
    path: Path,
    *,
    frames: int = 30,
    width: int = 96,
    height: int = 72,
    codec: str = "libx264",
    pixel_format: str = "yuv420p",
    fps: int = 30,
    times_ms: list[int] | None = None,
    first_image: int = 0,
    rotation: int = 0,
    faststart: bool = False,
    keyframe_every: int | None = None,
    textured: bool = False,
    bt709: bool = False,
) -> Path:
    """A video of `frames` frames; `times_ms` gives each frame's presentation time (variable rate),
    `first_image` shifts the content, `rotation` (degrees counter-clockwise) is stored as display
    metadata, `faststart` puts an mp4's index before the frames, and `keyframe_every` N makes every
    N-th frame a keyframe (larger than the frames between); `textured` frames (seeded noise that
    moves) compress poorly, so each takes many bytes; `bt709` stores the frames with BT.709's colour
    matrix (HD's), tagged as such."""
    options = {"movflags": "+faststart"} if faststart else {}
    texture = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8) if textured else None
    codec_options = {"g": str(keyframe_every)} if keyframe_every else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps, options=codec_options)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        if rotation:
            stream.set_display_rotation(rotation)
        if bt709:
            stream.codec_context.colorspace = 1  # AVCOL_SPC_BT709: RGB in is converted with it
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for index in range(frames if times_ms is None else len(times_ms)):
            image = frame_image(first_image + index, width, height)
            if texture is not None:
                image = image // 2 + np.roll(texture, 3 * index, axis=1) // 2
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def ts_cuts(path: Path) -> dict[str, list[int]]:
    """Where MPEG-TS `path` can be cut at a 188-byte packet boundary, by the video packet the cut
    falls before: the "first" of a frame (the frames before it are whole), a "middle" one (a full
    packet of that frame and more are lost) or the "last" one of a frame; as byte offsets."""
    data = path.read_bytes()
    packets = [data[at : at + TS_PACKET] for at in range(0, len(data), TS_PACKET)]
    # A frame is one PES packet: its first TS packet has payload_unit_start_indicator set.
    video_pid = next(_ts_pid(p) for p in packets if p[1] & 0x40 and b"\x00\x00\x01\xe0" in p[4:])
    video = [k for k, packet in enumerate(packets) if _ts_pid(packet) == video_pid]
    starts = {k for k in video if packets[k][1] & 0x40}
    cuts: dict[str, list[int]] = {"first": [], "middle": [], "last": []}
    for k, after in itertools.pairwise(video):
        kind = "first" if k in starts else "last" if after in starts else "middle"
        cuts[kind].append(k * TS_PACKET)
    return cuts


def _ts_pid(packet: bytes) -> int:
    return (packet[1] & 0x1F) << 8 | packet[2]


def write_audio_only(path: Path, *, seconds: float = 0.5, rate: int = 16000) -> Path:
    """A file with one AAC audio stream and no video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        for start in range(0, int(seconds * rate), 1024):
            samples = np.sin(np.arange(start, start + 1024, dtype=np.float32) / 10)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_reference(path: Path, *, gray: bool = False) -> tuple[np.ndarray, list[float]]:
    """Every frame of `path` as displayed (rotation applied), RGB [T, H, W, 3] (`gray`: FFmpeg's
    own conversion to full-range gray, [T, H, W, 1]), and its time in ms: decoded with PyAV alone,
    without threads, as a reference independent of vidlstm's decoder."""
    images, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        origin = stream.start_time or 0
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="gray")[..., None] if gray else frame.to_ndarray(format="rgb24")
            images.append(np.ascontiguousarray(np.rot90(image, k=round(frame.rotation / 90))))
            times.append(float((frame.pts - origin) * stream.time_base) * 1000)
    return np.stack(images), times
