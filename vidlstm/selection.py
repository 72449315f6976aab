"""Which frames of a video to embed: the one frame-selection type of the whole package.

Plain Python (no torch, no protobuf), so the light client, the decoder and the server share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FrameSelection"]

MAX_EVERY = (1 << 32) - 1  # VideoOptions.every is a uint32
MAX_FRAMES = (1 << 63) - 1
MAX_FPS = 1e6  # no video has more; far larger rates overflow the sampling arithmetic


@dataclass(frozen=True)
class FrameSelection:
    """Which frames of a video to embed: every `every`-th, or one per 1/`fps` s of presentation time,
    within [`start_s`, `end_s`), at most `max_frames` (None: no limit).

    The one type and the one place these options are checked, for the CLI, the clients, the decoder
    (`vidlstm.models.video`) and the EncodeVideo RPC: a bad value raises ValueError naming it, before
    any video is read.
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


def _is_finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_int(name: str, value: int, largest: int, hint: str) -> None:
    if not isinstance(value, int) or not 1 <= value <= largest:
        raise ValueError(f"{name} must be a whole number from 1 to {largest} ({hint}), got {value!r}")
