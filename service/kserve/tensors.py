"""KServe v2 requests -> frames and sequence controls, embeddings -> responses, every check named."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidlstm.kserve import grpc_service_pb2 as kpb
from vidlstm.models import PixelFormat, WeightsVersion

from ..convert import FrameLimits, check_frame_shape
from ..errors import InvalidArgument
from ..sequences import SequenceId, shown
from .model import MODEL_VERSION, KServeModel

__all__ = ["SequenceControl", "check_outputs", "infer_response", "input_frames", "sequence_control"]

MAX_STRING_ID_BYTES = 256  # a server-held sequence keeps its id: bounded, like everything it holds

_FORMAT_BY_CHANNELS = {1: PixelFormat.GRAY, 3: PixelFormat.RGB}
_UNSUPPORTED_PARAMETERS = {
    "shared_memory_region": "shared memory is not supported: send the tensor's contents",
    "classification": "classification outputs are not supported: the output is an embedding",
}


@dataclass(frozen=True)
class SequenceControl:
    """Triton's sequence parameters: `sequence_id` None (0 or "" on the wire) means no sequence."""

    sequence_id: SequenceId | None
    start: bool
    end: bool


def sequence_control(parameters: Any) -> SequenceControl:
    """Reads `sequence_id` (int64, uint64 or string), `sequence_start` and `sequence_end`; other
    parameters (priority, timeout, triton_enable_empty_final_response, ...) do not apply and are ignored."""
    sequence_id: SequenceId | None = None
    if "sequence_id" in parameters:
        value = parameters["sequence_id"]
        kind = value.WhichOneof("parameter_choice")
        if kind not in ("int64_param", "uint64_param", "string_param"):
            raise InvalidArgument(f"parameter sequence_id must be an int64, uint64 or string, got {kind}")
        raw: SequenceId = getattr(value, kind)
        if isinstance(raw, str) and len(raw.encode()) > MAX_STRING_ID_BYTES:
            raise InvalidArgument(
                f"string sequence_id {shown(raw)} has {len(raw.encode())} bytes, at most "
                f"{MAX_STRING_ID_BYTES} are accepted"
            )
        # Triton keeps integer ids as uint64: int64 -1 is the same sequence as uint64 2**64 - 1.
        sequence_id = (raw % 2**64 if isinstance(raw, int) else raw) or None
    flags = {name: _bool_parameter(parameters, name) for name in ("sequence_start", "sequence_end")}
    if sequence_id is None and any(flags.values()):
        raise InvalidArgument("sequence_start/sequence_end need a non-zero or non-empty sequence_id")
    return SequenceControl(sequence_id, flags["sequence_start"], flags["sequence_end"])


def _bool_parameter(parameters: Any, name: str) -> bool:
    if name not in parameters:
        return False
    value = parameters[name]
    if value.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidArgument(f"parameter {name} must be a bool")
    return bool(value.bool_param)


def input_frames(
    request: kpb.ModelInferRequest, model: KServeModel, limits: FrameLimits
) -> tuple[np.ndarray, PixelFormat]:
    """The request's frames uint8 [N, H, W, C] (C: 1 gray or 3 RGB), from raw or typed contents."""
    names = [tensor.name for tensor in request.inputs]
    if names != [model.input_name]:
        raise InvalidArgument(
            f"send one input tensor named {model.input_name!r} (UINT8 frames [N, H, W, C]), got {names}"
        )
    tensor = request.inputs[0]
    _refuse_unsupported(tensor.parameters, f"input {tensor.name!r}")
    if tensor.datatype != "UINT8":
        raise InvalidArgument(f"input {tensor.name!r} must be UINT8, got {tensor.datatype or 'no datatype'}")
    shape = list(tensor.shape)
    if len(shape) != 4 or shape[3] not in _FORMAT_BY_CHANNELS:
        raise InvalidArgument(
            f"input {tensor.name!r} must be [N, H, W, C] with C 1 (gray) or 3 (RGB), got shape {shape}"
        )
    pixel_format = _FORMAT_BY_CHANNELS[shape[3]]
    check_frame_shape(shape, pixel_format, limits)
    return _contents(request, tensor, math.prod(shape)).reshape(shape), pixel_format


def _contents(request: kpb.ModelInferRequest, tensor: Any, count: int) -> np.ndarray:
    if request.raw_input_contents and tensor.contents.ByteSize():
        raise InvalidArgument(
            f"input {tensor.name!r} has both raw_input_contents and typed contents; send one of them"
        )
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input tensor"
            )
        data = request.raw_input_contents[0]
        if len(data) != count:
            raise InvalidArgument(
                f"input {tensor.name!r}: raw contents have {len(data)} bytes, shape "
                f"{list(tensor.shape)} of UINT8 needs {count}"
            )
        return np.frombuffer(data, dtype=np.uint8)
    values = tensor.contents.uint_contents
    if len(values) != count:
        raise InvalidArgument(
            f"input {tensor.name!r}: {len(values)} values in contents.uint_contents, shape "
            f"{list(tensor.shape)} needs {count} (or send raw_input_contents)"
        )
    array = np.array(values, dtype=np.uint32)
    if array.size and array.max() > 255:
        raise InvalidArgument(f"input {tensor.name!r}: UINT8 values must be 0..255, got {array.max()}")
    return array.astype(np.uint8)


def check_outputs(request: kpb.ModelInferRequest, model: KServeModel) -> None:
    """Requested outputs must be the embedding (asking for none means all)."""
    for output in request.outputs:
        if output.name != model.output_name:
            raise InvalidArgument(f"unknown output {output.name!r}; this model has {model.output_name!r}")
        _refuse_unsupported(output.parameters, f"output {output.name!r}")


def _refuse_unsupported(parameters: Any, where: str) -> None:
    for name, why in _UNSUPPORTED_PARAMETERS.items():
        if name in parameters:
            raise InvalidArgument(f"{where}: {why}")


def infer_response(
    request: kpb.ModelInferRequest, model: KServeModel, embeddings: np.ndarray, version: WeightsVersion
) -> kpb.ModelInferResponse:
    """Embeddings float32 [N, D] -> the response, as raw contents; the output's parameters name the
    weights they ran on: `weights_version`, `weights_hash` and, when the push sent one, `learner_step`."""
    response = kpb.ModelInferResponse(model_name=model.name, model_version=MODEL_VERSION, id=request.id)
    output = response.outputs.add(name=model.output_name, datatype="FP32", shape=list(embeddings.shape))
    output.parameters["weights_version"].int64_param = version.number
    output.parameters["weights_hash"].string_param = version.weights_hash
    if version.learner_step is not None:
        output.parameters["learner_step"].int64_param = version.learner_step
    response.raw_output_contents.append(np.ascontiguousarray(embeddings, dtype="<f4").tobytes())
    return response
