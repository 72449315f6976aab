"""proto <-> numpy, with every check a client could fail named in the error message."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vidlstm.models import (
    FrameError,
    InputSpec,
    PixelFormat,
    StateTensorSpec,
    WeightsVersion,
    decode_image,
    prepare_frames,
)
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.wire import WIRE_DTYPES, tensor_to_proto

from .errors import InvalidArgument
from .versions import VersionHistory

__all__ = [
    "FrameLimits",
    "ResponseBudget",
    "check_frame_shape",
    "embedding_dtype",
    "frames_need_work",
    "frames_to_model_input",
    "state_from_proto",
    "state_to_proto",
]

_PIXEL_FORMATS: dict[int, PixelFormat] = {
    pb.RGB: PixelFormat.RGB,
    pb.BGR: PixelFormat.BGR,
    pb.GRAY: PixelFormat.GRAY,
}


@dataclass(frozen=True)
class FrameLimits:
    """Bounds on what one request may ask the server to decode and hold."""

    max_frames: int = 4096
    max_side: int = 4096
    max_image_pixels: int = 16_000_000


@dataclass(frozen=True)
class ResponseBudget:
    """Whether a response fits in one gRPC message, checked before any work: a response over the
    limit would fail in the transport after the model ran, and end a stream with all its envs."""

    max_message_bytes: int
    embedding_size: int
    state_bytes: int  # one env's state tensors

    # Field tags, lengths, shapes and the weights hash around the arrays: generous on purpose.
    OVERHEAD_BYTES = 1024
    PER_STATE_OVERHEAD_BYTES = 256
    PER_EMBEDDING_OVERHEAD_BYTES = 10  # an env id (varint)

    def check(self, embeddings: int, dtype: pb.DType, states: int, fix: str) -> None:
        per_embedding = self.embedding_size * WIRE_DTYPES[dtype].itemsize + self.PER_EMBEDDING_OVERHEAD_BYTES
        size = (
            self.OVERHEAD_BYTES
            + embeddings * per_embedding
            + states * (self.state_bytes + self.PER_STATE_OVERHEAD_BYTES)
        )
        if size > self.max_message_bytes:
            raise InvalidArgument(
                f"the response ({embeddings} embeddings, {states} states) would take about {size} bytes, "
                f"over the server's message limit of {self.max_message_bytes} bytes; {fix}"
            )


def frames_need_work(frames: pb.Frames, spec: InputSpec) -> bool:
    """True when frames must be decoded or resized (worth a worker thread), False for raw frames
    already at the model's size."""
    if frames.WhichOneof("source") != "raw":
        return True
    shape = list(frames.raw.shape)
    return len(shape) != 4 or shape[1:3] != [spec.height, spec.width]


def frames_to_model_input(frames: pb.Frames, spec: InputSpec, limits: FrameLimits) -> np.ndarray:
    """Frames message -> uint8 [N, C, H, W] at the model's input size."""
    try:
        source = frames.WhichOneof("source")
        if source == "raw":
            return _raw_frames(frames.raw, spec, limits)
        if source == "encoded":
            return _encoded_frames(frames.encoded, spec, limits)
        raise InvalidArgument("no frames: set Frames.raw or Frames.encoded")
    except FrameError as error:
        raise InvalidArgument(str(error)) from None


def _raw_frames(raw: pb.RawFrames, spec: InputSpec, limits: FrameLimits) -> np.ndarray:
    shape = list(raw.shape)
    if len(shape) != 4:
        raise InvalidArgument(f"RawFrames.shape must be [N, H, W, C], got {shape}")
    pixel_format = _pixel_format(raw.pixel_format)
    check_frame_shape(shape, pixel_format, limits)
    expected = math.prod(shape)
    if len(raw.data) != expected:
        raise InvalidArgument(
            f"RawFrames.data has {len(raw.data)} bytes, shape {shape} of uint8 needs {expected}"
        )
    array = np.frombuffer(raw.data, dtype=np.uint8).reshape(shape)
    return prepare_frames(array, pixel_format, spec)


def check_frame_shape(shape: list[int], pixel_format: PixelFormat, limits: FrameLimits) -> None:
    """Refuses uint8 frames [N, H, W, C] that are empty, too many, too large or of the wrong channels,
    before their bytes are read."""
    count, height, width, channels = shape
    _check_count(count, limits)
    if not (0 < height <= limits.max_side and 0 < width <= limits.max_side):
        raise InvalidArgument(f"frame size {height}x{width} outside 1..{limits.max_side} per side")
    if channels != pixel_format.channels:
        raise InvalidArgument(
            f"{pixel_format.value} frames have {pixel_format.channels} channel(s), shape says {channels}"
        )


def _encoded_frames(encoded: pb.EncodedFrames, spec: InputSpec, limits: FrameLimits) -> np.ndarray:
    _check_count(len(encoded.images), limits)
    prepared = [
        prepare_frames(_decoded(index, data, limits)[None], PixelFormat.RGB, spec)
        for index, data in enumerate(encoded.images)
    ]
    return np.concatenate(prepared)


def _decoded(index: int, data: bytes, limits: FrameLimits) -> np.ndarray:
    """One image -> uint8 [H, W, 3] RGB; the error names which of the message's images is bad."""
    try:
        return decode_image(data, max_side=limits.max_side, max_pixels=limits.max_image_pixels)
    except FrameError as error:
        raise FrameError(f"EncodedFrames.images[{index}]: {error}") from None


def _check_count(count: int, limits: FrameLimits) -> None:
    if count == 0:
        raise InvalidArgument("zero frames: send at least one frame")
    if not 0 < count <= limits.max_frames:
        raise InvalidArgument(f"{count} frames in one message; the limit is {limits.max_frames}")


def _pixel_format(value: int) -> PixelFormat:
    try:
        return _PIXEL_FORMATS[value]
    except KeyError:
        raise InvalidArgument(f"unknown pixel_format {value}; use RGB, BGR or GRAY") from None


def embedding_dtype(value: int) -> pb.DType:
    """Validates a requested embedding dtype (FLOAT32 by default, or FLOAT16)."""
    if value in (pb.DTYPE_UNSPECIFIED, pb.FLOAT32):
        return pb.FLOAT32
    if value == pb.FLOAT16:
        return pb.FLOAT16
    raise InvalidArgument(f"embedding_dtype must be FLOAT32 or FLOAT16, got {value}")


def state_to_proto(state: Mapping[str, np.ndarray], version: WeightsVersion, lineage: str) -> pb.State:
    """Per-env state (no batch dimension) -> State, tagged with the weights that made it."""
    tensors = {name: tensor_to_proto(array) for name, array in state.items()}
    return pb.State(
        weights_hash=version.weights_hash, tensors=tensors, lineage=lineage, version=version.number
    )


def state_from_proto(
    state: pb.State, specs: list[StateTensorSpec], history: VersionHistory
) -> tuple[dict[str, np.ndarray], WeightsVersion]:
    """State -> per-env arrays and the version that made them, refusing state of another model (see
    `VersionHistory`) or of the wrong shapes."""
    made_by = history.check_state(state.weights_hash, state.lineage, state.version)
    expected = {s.name for s in specs}
    if set(state.tensors) != expected:
        raise InvalidArgument(
            f"state has tensors {sorted(state.tensors)}, the model needs {sorted(expected)}"
        )
    arrays = {}
    for spec in specs:
        tensor = state.tensors[spec.name]
        wire = WIRE_DTYPES.get(tensor.dtype)
        want = spec.numpy_dtype
        if wire != want or list(tensor.shape) != list(spec.shape):
            raise InvalidArgument(
                f"state tensor {spec.name!r} must be {want} {list(spec.shape)}, "
                f"got {wire} {list(tensor.shape)}"
            )
        if len(tensor.data) != want.itemsize * math.prod(spec.shape):
            raise InvalidArgument(f"state tensor {spec.name!r} has {len(tensor.data)} bytes for its shape")
        array = np.frombuffer(tensor.data, dtype=want).reshape(spec.shape)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidArgument(
                f"state tensor {spec.name!r} holds NaN or infinite values; send the state the server "
                "returned, or leave it unset for zero state"
            )
        arrays[spec.name] = array
    return arrays, made_by
