"""Tensors and frames on the wire, numpy only: shared by the server and the light clients."""

from __future__ import annotations

import math

import numpy as np

from vidlstm.v1 import encoder_pb2 as pb

__all__ = [
    "PIXEL_FORMATS",
    "WIRE_DTYPES",
    "proto_dtype",
    "raw_frames",
    "tensor_from_proto",
    "tensor_to_proto",
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
