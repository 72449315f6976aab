"""Real encoded test videos, written with PyAV (FFmpeg) in fixtures."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


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
) -> Path:
    """A video of `frames` frames; `times_ms` gives each frame's presentation time (variable rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for index in range(frames if times_ms is None else len(times_ms)):
            frame = av.VideoFrame.from_ndarray(frame_image(index, width, height), format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
