"""Building requests and reading responses: shared by the sync and the asyncio clients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.weights_version import WeightsVersion
from vidlstm.wire import raw_frames, tensor_from_proto, weights_from_proto

from .state import RecurrentState

__all__ = ["EncodeResult", "FrameInput", "SequenceInput", "encode_request", "encode_results", "frames_proto"]

# uint8 [T, H, W, C] / [T, H, W] array, or a list of encoded JPEG/PNG files.
FrameInput = np.ndarray | Sequence[bytes]
EmbeddingDType = Literal["float32", "float16"]
DTYPES = {"float32": pb.FLOAT32, "float16": pb.FLOAT16}


@dataclass(frozen=True)
class SequenceInput:
    """One sequence for `Encode`: frames, per-frame episode starts, optional starting state."""

    frames: FrameInput
    episode_start: Sequence[bool] | np.ndarray | None = None
    state: RecurrentState | None = None


@dataclass(frozen=True)
class EncodeResult:
    embeddings: np.ndarray  # [T, D]
    state: RecurrentState | None  # pass back as `state=` to continue the sequence
    weights: WeightsVersion  # the weights it ran on (every sequence of a call runs on one version)


def frames_proto(frames: FrameInput, pixel_format: str) -> pb.Frames:
    if isinstance(frames, np.ndarray):
        return raw_frames(frames, pixel_format)
    return pb.Frames(encoded=pb.EncodedFrames(images=list(frames)))


def encode_request(
    sequences: Sequence[SequenceInput], *, pixel_format: str, dtype: EmbeddingDType, return_state: bool
) -> pb.EncodeRequest:
    request = pb.EncodeRequest(embedding_dtype=DTYPES[dtype], return_state=return_state)
    for sequence in sequences:
        item = request.sequences.add(frames=frames_proto(sequence.frames, pixel_format))
        if sequence.episode_start is not None:
            item.episode_start.extend(bool(s) for s in sequence.episode_start)
        if sequence.state is not None:
            item.initial_state.CopyFrom(sequence.state.to_proto())
    return request


def encode_results(response: pb.EncodeResponse) -> list[EncodeResult]:
    weights = weights_from_proto(response.weights)
    return [
        EncodeResult(
            tensor_from_proto(result.embeddings),
            RecurrentState.from_proto(result.final_state) if result.HasField("final_state") else None,
            weights,
        )
        for result in response.results
    ]
