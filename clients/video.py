"""Client side of EncodeVideo: upload a file in chunks (or name a server-side path), read the
embeddings back as the server computes them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidlstm.selection import FrameSelection
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.weights_version import WeightsVersion
from vidlstm.wire import tensor_from_proto, weights_from_proto

from .state import RecurrentState

__all__ = ["FrameSelection", "VideoPart", "video_requests"]

UPLOAD_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class VideoPart:
    """One response: embeddings [n, D] of the next n sampled frames; the last part has `summary`."""

    embeddings: np.ndarray
    timestamps_ms: np.ndarray
    frame_indices: np.ndarray
    summary: pb.VideoSummary | None = None
    final_state: RecurrentState | None = field(default=None)
    weights: WeightsVersion | None = None  # the weights these frames ran on (None on the summary)

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
            weights=weights_from_proto(response.weights),
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
    if first:  # an empty file: still a request, refused by the server as the video it is not
        yield pb.VideoRequest(options=options)
