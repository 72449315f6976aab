"""Tensors and frames on the wire, numpy only: shared by the server and the light clients."""

from __future__ import annotations

import math

import numpy as np

from vidlstm.selection import FrameSelection
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.weights_version import WeightsVersion

__all__ = [
    "PIXEL_FORMATS",
    "WIRE_DTYPES",
    "proto_dtype",
    "raw_frames",
    "selection_from_proto",
    "selection_to_proto",
    "tensor_from_proto",
    "tensor_to_proto",
    "weights_from_proto",
    "weights_to_proto",
]

WIRE_DTYPES: dict[pb.DType, np.dtype] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.UINT8: np.dtype("u1"),
}
_PROTO_DTYPES = {dtype: code for code, dtype in WIRE_DTYPES.items()}


def proto_dtype(dtype: np.dtype) -> pb.DType:
    """numpy dtype -> DType enum value."""
    return _PROTO_DTYPES[dtype]


PIXEL_FORMATS = {"RGB": pb.RGB, "BGR": pb.BGR, "GRAY": pb.GRAY}


def tensor_to_proto(array: np.ndarray, dtype: pb.DType | None = None) -> pb.Tensor:
    """numpy -> Tensor, cast to the wire dtype `dtype` (default: the array's own)."""
    if dtype is None:
        dtype = proto_dtype(array.dtype)
    elif dtype == pb.DTYPE_UNSPECIFIED:
        dtype = pb.FLOAT32
    data = np.ascontiguousarray(array, dtype=WIRE_DTYPES[dtype]).tobytes()
    return pb.Tensor(shape=array.shape, dtype=dtype, data=data)


def tensor_from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Tensor -> numpy view of its bytes (read-only), checked against its shape."""
    dtype = WIRE_DTYPES.get(pb.FLOAT32 if tensor.dtype == pb.DTYPE_UNSPECIFIED else tensor.dtype)
    if dtype is None:
        raise ValueError(f"unknown tensor dtype {tensor.dtype}")
    shape = tuple(tensor.shape)
    if len(tensor.data) != dtype.itemsize * math.prod(shape):
        raise ValueError(f"tensor of shape {list(shape)} has {len(tensor.data)} bytes of {dtype}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def raw_frames(frames: np.ndarray, pixel_format: str) -> pb.Frames:
    """uint8 [N, H, W, C] (or [N, H, W] for gray) -> Frames.raw."""
    if frames.ndim == 3:
        frames = frames[..., None]
    if pixel_format not in PIXEL_FORMATS:
        raise ValueError(f"pixel_format must be one of {sorted(PIXEL_FORMATS)}, got {pixel_format!r}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    raw = pb.RawFrames(shape=frames.shape, pixel_format=PIXEL_FORMATS[pixel_format], data=frames.tobytes())
    return pb.Frames(raw=raw)


def selection_to_proto(selection: FrameSelection) -> pb.VideoOptions:
    """The selection as VideoOptions (0 means unset, as in the proto)."""
    return pb.VideoOptions(
        every=selection.every,
        fps=selection.fps or 0.0,
        start_s=selection.start_s,
        end_s=selection.end_s or 0.0,
        max_frames=selection.max_frames or 0,
    )


def selection_from_proto(options: pb.VideoOptions) -> FrameSelection:
    """The selection `options` ask for; ValueError naming a bad value."""
    return FrameSelection(
        every=options.every or 1,
        fps=options.fps or None,
        start_s=options.start_s,
        end_s=options.end_s or None,
        max_frames=options.max_frames or None,
    )


def weights_to_proto(version: WeightsVersion) -> pb.WeightsVersion:
    return pb.WeightsVersion(
        version=version.number, weights_hash=version.weights_hash, learner_step=version.learner_step
    )


def weights_from_proto(message: pb.WeightsVersion) -> WeightsVersion:
    step = message.learner_step if message.HasField("learner_step") else None
    return WeightsVersion(message.version, message.weights_hash, step)
