"""Pixel formats in, model input out: the one place that converts colours and sizes.

Frames arrive as uint8 [N, H, W, C] of any size in RGB, BGR or GRAY; the model wants uint8
[N, C', h, w] at its input size, gray or RGB (scaling and stacking happen in the model).
"""

from __future__ import annotations

import cv2
import numpy as np

from .spec import InputSpec, PixelFormat

__all__ = ["FrameError", "prepare_frames"]

_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}

_TO_GRAY = {PixelFormat.RGB: cv2.COLOR_RGB2GRAY, PixelFormat.BGR: cv2.COLOR_BGR2GRAY}
_TO_RGB = {PixelFormat.BGR: cv2.COLOR_BGR2RGB, PixelFormat.GRAY: cv2.COLOR_GRAY2RGB}


class FrameError(ValueError):
    """Frames that cannot be turned into model input; the message says what to fix."""


def prepare_frames(frames: np.ndarray, pixel_format: PixelFormat, spec: InputSpec) -> np.ndarray:
    """uint8 [N, H, W, C] in `pixel_format` -> uint8 [N, C', spec.height, spec.width]."""
    if frames.dtype != np.uint8:
        raise FrameError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise FrameError(f"frames must be [N>0, H, W, C], got shape {list(frames.shape)}")
    if frames.shape[3] != pixel_format.channels:
        raise FrameError(
            f"{pixel_format.value} frames need {pixel_format.channels} channel(s) "
            f"in [N, H, W, C], got C={frames.shape[3]}"
        )
    target_format = PixelFormat.GRAY if spec.grayscale else PixelFormat.RGB
    if pixel_format is target_format and frames.shape[1:3] == (spec.height, spec.width):
        return frames.transpose(0, 3, 1, 2)  # already model input: no copy
    out = np.empty((frames.shape[0], spec.height, spec.width, spec.channels), dtype=np.uint8)
    for frame, target in zip(frames, out, strict=True):
        target[...] = prepare_frame(frame, pixel_format, spec).reshape(target.shape)
    return out.transpose(0, 3, 1, 2)


def prepare_frame(frame: np.ndarray, pixel_format: PixelFormat, spec: InputSpec) -> np.ndarray:
    """One [H, W, C] frame -> [h, w] (gray) or [h, w, 3] (RGB). Colour first: gray resizes 3x faster."""
    if spec.grayscale and pixel_format is not PixelFormat.GRAY:
        frame = cv2.cvtColor(frame, _TO_GRAY[pixel_format])
    elif not spec.grayscale and pixel_format is not PixelFormat.RGB:
        frame = cv2.cvtColor(frame, _TO_RGB[pixel_format])
    if frame.shape[:2] != (spec.height, spec.width):
        if spec.resize == "area":
            frame = _halve_while_far(frame, spec)
        frame = cv2.resize(frame, (spec.width, spec.height), interpolation=_INTERPOLATION[spec.resize])
    return frame


def _halve_while_far(frame: np.ndarray, spec: InputSpec) -> np.ndarray:
    """2x2 box averages while the frame is 4x the target or more: OpenCV's INTER_AREA is ~10x
    slower on large non-integer downscales (720p -> 84x84: 3.0 ms vs 0.3 ms). The result is close
    to a single INTER_AREA (measured: mean 0.55, max 2 grey levels on smooth content), not equal.
    Atari-sized frames (under 4x) go straight to INTER_AREA, as Gymnasium/SB3 wrappers do."""
    while frame.shape[0] >= 4 * spec.height and frame.shape[1] >= 4 * spec.width:
        frame = cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return frame
