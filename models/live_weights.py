"""New weights for a model while it serves: read from a `.safetensors` file's bytes, checked against
the served model, staged on its device (any thread), then copied into it in place (the model thread,
between two batches).

Copying in place keeps every tensor where it was, so what was built around the weights keeps
working: the CNN cast to bf16/fp16 (the staged copy is cast first), CUDA graphs (they read the
weights' memory) and torch.compile (built with `live_weights`, it takes the weights as inputs
instead of freezing them into the graph as constants).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from vidlstm.weights_version import WeightsVersion

from .checkpoint import SPEC_METADATA_KEY, hashed_tensor_header, learner_step_in
from .encoders import encoder_params
from .spec import ModelSpec

__all__ = [
    "ArchitectureMismatchError",
    "StagedWeights",
    "TensorLayout",
    "WeightsError",
    "WeightsVersion",
    "layout_of",
    "stage_weights",
]

# name -> (dtype, shape) of every tensor of a model's state dict
TensorLayout = dict[str, tuple[torch.dtype, tuple[int, ...]]]


class WeightsError(ValueError):
    """Bytes that are not usable weights (not safetensors, not finite); the message says why."""


class ArchitectureMismatchError(WeightsError):
    """Weights of another architecture or input than the served model's; the message says what differs."""


@dataclass(frozen=True)
class StagedWeights:
    """Checked weights on the model's device, each tensor in its target's dtype: installing them is
    one copy into the model's tensors."""

    tensors: dict[str, torch.Tensor]
    weights_hash: str  # of the fp32 weights as sent
    learner_step: int | None


def stage_weights(
    data: bytes,
    *,
    spec: ModelSpec,
    layout: TensorLayout,
    targets: Mapping[str, torch.Tensor],
    learner_step: int | None,
) -> StagedWeights:
    """Reads `data` (a `.safetensors` file) and checks it against the served model: its spec, when
    it carries one, has the same encoder, core and input as `spec` (name and seed may differ); its
    tensors have `layout`'s names, dtypes and shapes and are finite. Then casts and copies them to
    `targets`' dtypes and device. `learner_step` None takes the file's own, if it has one."""
    header, payload = _header(data)
    metadata = header.get("__metadata__")
    metadata = metadata if isinstance(metadata, dict) else {}
    if SPEC_METADATA_KEY in metadata:
        _check_spec(_spec(metadata[SPEC_METADATA_KEY]), spec)
    try:
        tensors = load(data)
    except SafetensorError as error:
        raise WeightsError(f"not a valid safetensors file: {error}") from None
    _check_layout(tensors, layout)
    _check_finite(tensors)
    # The loaded tensors are this call's own: where device and dtype already match, no copy is made.
    staged = {
        name: _to(tensor, targets[name].device, targets[name].dtype) for name, tensor in tensors.items()
    }
    if any(t.device.type == "cuda" for t in staged.values()):
        torch.cuda.synchronize()  # copied on this thread's stream: done before the model thread reads
    if learner_step is None:
        try:
            learner_step = learner_step_in(metadata)
        except ValueError as error:
            raise WeightsError(str(error)) from None
    return StagedWeights(staged, _file_hash(memoryview(data)[payload:], header, tensors), learner_step)


# Staging runs beside the event loop and the model thread, and every torch call hands the GIL over
# and waits to get it back: under load that wait, not the arithmetic, was most of a swap's time. So
# staging makes few calls: one for all norms, no copy where nothing changes, the hash from the bytes.


def _check_finite(tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuses NaN and infinite values: one norm per tensor in a single call; only when one is not
    finite (or overflows) are the suspects checked element by element, to name them."""
    floats = {name: t for name, t in tensors.items() if t.dtype.is_floating_point}
    norms = torch._foreach_norm(list(floats.values()))
    if bool(torch.stack(norms).isfinite().all()):
        return
    suspects = [name for name, norm in zip(floats, norms, strict=True) if not norm.isfinite()]
    bad = [name for name in suspects if not floats[name].isfinite().all()]
    if bad:
        raise WeightsError(f"tensors {sorted(bad)} hold NaN or infinite values; nothing was installed")


def _to(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return tensor if (tensor.device, tensor.dtype) == (device, dtype) else tensor.to(device, dtype)


def _file_hash(payload: memoryview, header: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """`tensors_hash(tensors)`, taken from the file's bytes (safetensors stores each tensor's
    little-endian, row-major bytes at its offsets) instead of from the tensors."""
    message = bytearray()  # hashed in one call: one GIL hand-over instead of one per tensor
    for name, tensor in sorted(tensors.items()):
        begin, end = header[name]["data_offsets"]
        message += hashed_tensor_header(name, tensor)
        message += payload[begin:end]
    return hashlib.sha256(message).hexdigest()


def layout_of(tensors: Mapping[str, torch.Tensor]) -> TensorLayout:
    return {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors.items()}


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (8 bytes of length, then JSON) and where its tensor bytes start."""
    if len(data) < 8:
        raise WeightsError(f"not a safetensors file: {len(data)} bytes")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise WeightsError(
            f"not a safetensors file: its header claims {length} bytes, {len(data) - 8} follow"
        )
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"not a safetensors file: its header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise WeightsError("not a safetensors file: its header is not a JSON object")
    return header, 8 + length


def _spec(text: str) -> ModelSpec:
    try:
        return ModelSpec.from_dict(json.loads(text))
    except (ValueError, TypeError) as error:
        raise WeightsError(f"the file's model spec ({SPEC_METADATA_KEY}) is not valid: {error}") from None


def _check_spec(sent: ModelSpec, served: ModelSpec) -> None:
    """Encoder (its params with their defaults), core and input must match field by field; the name
    and seed are free."""
    served_fields = _architecture(served)
    differences = [
        f"{key} is {value!r}, the served model's is {served_fields[key]!r}"
        for key, value in _architecture(sent).items()
        if value != served_fields[key]
    ]
    if differences:
        raise ArchitectureMismatchError(
            "the weights are for another architecture or input than the served model's: "
            + "; ".join(differences)
        )


def _architecture(spec: ModelSpec) -> dict[str, Any]:
    """What makes two models the same: "encoder.name", "encoder.params", "core.hidden_size", ..."""
    try:
        params = encoder_params(spec.encoder)
    except ValueError as error:
        raise ArchitectureMismatchError(
            f"the weights' spec names an encoder this server cannot build: {error}"
        ) from None
    fields = {"encoder.name": spec.encoder.name, "encoder.params": params}
    for part in ("core", "input"):
        fields.update({f"{part}.{k}": v for k, v in dataclasses.asdict(getattr(spec, part)).items()})
    return fields


def _check_layout(tensors: Mapping[str, torch.Tensor], layout: TensorLayout) -> None:
    missing = sorted(set(layout) - set(tensors))
    unexpected = sorted(set(tensors) - set(layout))
    if missing or unexpected:
        raise ArchitectureMismatchError(
            f"the weights do not fit the served model: missing tensors {missing[:8]}, unexpected "
            f"tensors {unexpected[:8]}"
            + (" (first 8 of each)" if max(len(missing), len(unexpected)) > 8 else "")
        )
    wrong = [
        f"{name}: {tensor.dtype} {list(tensor.shape)} (served: {layout[name][0]} {list(layout[name][1])})"
        for name, tensor in sorted(tensors.items())
        if (tensor.dtype, tuple(tensor.shape)) != layout[name]
    ]
    if wrong:
        raise ArchitectureMismatchError(
            "the weights do not fit the served model (save them as the served model's fp32 state dict): "
            + "; ".join(wrong[:8])
        )
