"""Video -> prepared model input, chunk by chunk: decoding and preprocessing only, no torch, so
that decoder processes (encode-video's, the server's pool threads) need none of the model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidlstm.selection import FrameSelection

from .preprocessing import prepare_frames
from .spec import InputSpec
from .video import decode_video

__all__ = ["FrameChunk", "prepared_chunks"]


@dataclass(frozen=True)
class FrameChunk:
    frames: np.ndarray  # uint8 [n, C, H, W], model input
    timestamps_ms: np.ndarray  # float64 [n]
    indices: np.ndarray  # int64 [n]


def prepared_chunks(
    path: Path,
    spec: InputSpec,
    sampling: FrameSelection,
    *,
    chunk_frames: int,
    backend: str,
    threads: int,
    luma: bool = True,
) -> Iterator[FrameChunk]:
    """Decodes and preprocesses `path` into chunks of at most `chunk_frames` frames. A gray model
    takes the decoder's luma plane where it can (`luma`; see `decode_video`'s `gray`)."""
    images, times, indices = [], [], []
    gray = luma and spec.grayscale
    for frame in decode_video(path, sampling, backend=backend, threads=threads, gray=gray):
        images.append(prepare_frames(frame.image[None], frame.pixel_format, spec)[0])
        times.append(frame.timestamp_ms)
        indices.append(frame.index)
        if len(images) == chunk_frames:
            yield FrameChunk(np.stack(images), np.array(times), np.array(indices, dtype=np.int64))
            images, times, indices = [], [], []
    if images:
        yield FrameChunk(np.stack(images), np.array(times), np.array(indices, dtype=np.int64))
