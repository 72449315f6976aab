"""The ModelInfo message: what a client needs to know to talk to the served model."""

from __future__ import annotations

from vidlstm.models import InferenceModel
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.wire import proto_dtype, weights_to_proto

from .versions import VersionHistory

__all__ = ["model_info"]


def model_info(
    model: InferenceModel, history: VersionHistory, *, max_batch_size: int, accepts_weights: bool
) -> pb.ModelInfo:
    """As the model is now: its weights change with every install."""
    spec = model.model.spec
    version = history.current
    return pb.ModelInfo(
        name=spec.name,
        spec_json=spec.to_json(),
        pixel_formats=[pb.RGB, pb.BGR, pb.GRAY],
        input_height=spec.input.height,
        input_width=spec.input.width,
        input_channels=spec.input.channels,
        frame_stack=spec.input.frame_stack,
        embedding_size=model.model.out_size,
        state=[
            pb.StateTensorInfo(name=s.name, shape=s.shape, dtype=proto_dtype(s.numpy_dtype))
            for s in model.state_specs
        ],
        weights_hash=version.weights_hash,
        device=str(model.device),
        max_batch_size=max_batch_size,
        precision=model.precision,
        compiled=model.compile,
        weights=weights_to_proto(version),
        lineage=history.lineage,
        state_version_window=history.window,
        accepts_weights=accepts_weights,
    )
