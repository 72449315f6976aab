"""The recurrent state a client holds and passes back: opaque to the caller, checked by the server."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.wire import tensor_from_proto, tensor_to_proto

__all__ = ["RecurrentState"]


@dataclass(frozen=True)
class RecurrentState:
    """Per-sequence state (e.g. `h`, `c`: [num_layers, hidden]) and the weights that made it: their
    hash, the server's lineage and the version (the server accepts it back within its window)."""

    weights_hash: str
    tensors: dict[str, np.ndarray]
    lineage: str = ""
    version: int = 0

    @classmethod
    def from_proto(cls, state: pb.State) -> RecurrentState:
        tensors = {k: tensor_from_proto(v) for k, v in state.tensors.items()}
        return cls(state.weights_hash, tensors, state.lineage, state.version)

    def to_proto(self) -> pb.State:
        tensors = {k: tensor_to_proto(np.asarray(v)) for k, v in self.tensors.items()}
        return pb.State(
            weights_hash=self.weights_hash, tensors=tensors, lineage=self.lineage, version=self.version
        )
