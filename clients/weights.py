"""Client side of PushWeights: a `.safetensors` file (or its bytes) uploaded in chunks, with the
learner's step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.weights_version import WeightsVersion
from vidlstm.wire import weights_from_proto

__all__ = ["PushResult", "WeightsSource", "WeightsVersion", "push_requests", "read_weights"]

UPLOAD_CHUNK_BYTES = 1 << 20
WeightsSource = Path | str | bytes  # a .safetensors file, or its bytes


@dataclass(frozen=True)
class PushResult:
    """The version now serving, and how long the server took from the upload's last byte to serving."""

    weights: WeightsVersion
    install_ms: float

    @classmethod
    def from_proto(cls, response: pb.PushWeightsResponse) -> PushResult:
        return cls(weights_from_proto(response.weights), response.install_ms)


def read_weights(source: WeightsSource) -> bytes:
    """The file's bytes, read before any call: a missing file is the caller's OSError, not a failed
    upload."""
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def push_requests(
    data: bytes, *, learner_step: int | None, chunk_bytes: int = UPLOAD_CHUNK_BYTES
) -> Iterator[pb.PushWeightsRequest]:
    """The request stream: the file's bytes in chunks, the first with the learner step. (No sha256:
    it would be of the very bytes sent, which gRPC's transport already delivers intact; the field is
    for tools that forward a file whose published hash they know.)"""
    yield pb.PushWeightsRequest(data=data[:chunk_bytes], learner_step=learner_step)
    for start in range(chunk_bytes, len(data), chunk_bytes):
        yield pb.PushWeightsRequest(data=data[start : start + chunk_bytes])
