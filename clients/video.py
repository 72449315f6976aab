"""Client side of EncodeVideo: upload a file in chunks (or name a server-side path), read the
embeddings back as the server computes them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.wire import tensor_from_proto

from .state import RecurrentState

__all__ = ["FrameSelection", "VideoPart", "video_requests"]

UPLOAD_CHUNK_BYTES = 1 << 20
MAX_EVERY = (1 << 32) - 1  # VideoOptions.every is a uint32
MAX_FRAMES = (1 << 63) - 1
MAX_FPS = 1e6  # no video has more; far larger rates overflow the sampling arithmetic


@dataclass(frozen=True)
class FrameSelection:
    """Which frames of a video to embed: every `every`-th, or one per 1/`fps` s of presentation time,
    within [`start_s`, `end_s`), at most `max_frames` (None: no limit).

    The one place these options are checked, for the CLI, the clients and the EncodeVideo RPC
    (`from_proto`): a bad value raises ValueError naming it, before any video is read.
    """

    every: int = 1
    fps: float | None = None
    start_s: float = 0.0
    end_s: float | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        _check_int("every", self.every, MAX_EVERY, "1 keeps every frame")
        if self.fps is not None and not (_is_finite(self.fps) and 0 < self.fps <= MAX_FPS):
            raise ValueError(
                f"fps must be a number > 0 and <= {MAX_FPS:g} (frames kept per second), got {self.fps}"
            )
        if self.every > 1 and self.fps is not None:
            raise ValueError(f"use either every ({self.every}) or fps ({self.fps}), not both")
        if not (_is_finite(self.start_s) and self.start_s >= 0):
            raise ValueError(f"start_s must be a finite number of seconds >= 0, got {self.start_s}")
        if self.end_s is not None and not (_is_finite(self.end_s) and self.end_s > self.start_s):
            raise ValueError(
                f"end_s must be a finite number of seconds after start_s ({self.start_s}), got {self.end_s}"
            )
        if self.max_frames is not None:
            _check_int("max_frames", self.max_frames, MAX_FRAMES, "leave it unset for no limit")

    @classmethod
    def from_proto(cls, options: pb.VideoOptions) -> FrameSelection:
        """The selection `options` ask for (0 means unset, as in the proto); ValueError if bad."""
        return cls(
            every=options.every or 1,
            fps=options.fps or None,
            start_s=options.start_s,
            end_s=options.end_s or None,
            max_frames=options.max_frames or None,
        )

    def to_proto(self) -> pb.VideoOptions:
        return pb.VideoOptions(
            every=self.every,
            fps=self.fps or 0.0,
            start_s=self.start_s,
            end_s=self.end_s or 0.0,
            max_frames=self.max_frames or 0,
        )


def _is_finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_int(name: str, value: int, largest: int, hint: str) -> None:
    if not isinstance(value, int) or not 1 <= value <= largest:
        raise ValueError(f"{name} must be a whole number from 1 to {largest} ({hint}), got {value!r}")


@dataclass(frozen=True)
class VideoPart:
    """One response: embeddings [n, D] of the next n sampled frames; the last part has `summary`."""

    embeddings: np.ndarray
    timestamps_ms: np.ndarray
    frame_indices: np.ndarray
    summary: pb.VideoSummary | None = None
    final_state: RecurrentState | None = field(default=None)

    @classmethod
    def from_proto(cls, response: pb.VideoResponse) -> VideoPart:
        if response.HasField("summary"):
            state = response.summary.final_state
            final = RecurrentState.from_proto(state) if response.summary.HasField("final_state") else None
            empty = np.zeros(0)
            return cls(np.zeros((0, 0), np.float32), empty, empty.astype(np.int64), response.summary, final)
        return cls(
            tensor_from_proto(response.embeddings),
            np.asarray(response.timestamps_ms, dtype=np.float64),
            np.asarray(response.frame_indices, dtype=np.int64),
        )


def video_requests(
    source: Path | str, options: pb.VideoOptions, *, server_path: bool, chunk_bytes: int = UPLOAD_CHUNK_BYTES
) -> Iterator[pb.VideoRequest]:
    """The request stream: options + path, or options + the file's bytes in chunks."""
    if server_path:
        yield pb.VideoRequest(options=options, path=str(source))
        return
    with open(source, "rb") as file:
        first = True
        while data := file.read(chunk_bytes):
            yield pb.VideoRequest(options=options, data=data) if first else pb.VideoRequest(data=data)
            first = False
