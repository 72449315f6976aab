"""vidlstm.models: CNN encoders, the LSTM core, preprocessing, specs and checkpoints.

Knows torch, torchvision, numpy and image/video decoding; nothing of gRPC or settings.
Names are imported when first used, so a process that only decodes video (encode-video's decoder
processes) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import (
        CheckpointError,
        checkpoint_bytes,
        load_model,
        read_state_dict,
        save_checkpoint,
        weights_hash,
    )
    from .core import LSTMCore
    from .encoders import ENCODERS, ImpalaCNN, NatureCNN, TorchvisionBackbone, build_encoder
    from .images import decode_image
    from .live_weights import ArchitectureMismatchError, StagedWeights, WeightsError, WeightsVersion
    from .model import EmbeddingModel, State, StateTensorSpec, build_model
    from .preprocessing import FrameError, prepare_frames
    from .registry import Registry
    from .runtime import InferenceModel, load_inference_model, select_device, set_threads
    from .spec import CoreSpec, EncoderSpec, InputSpec, ModelSpec, PixelFormat, default_spec

__all__ = [
    "ENCODERS",
    "ArchitectureMismatchError",
    "CheckpointError",
    "CoreSpec",
    "EmbeddingModel",
    "EncoderSpec",
    "FrameError",
    "ImpalaCNN",
    "InferenceModel",
    "InputSpec",
    "LSTMCore",
    "ModelSpec",
    "NatureCNN",
    "PixelFormat",
    "Registry",
    "StagedWeights",
    "State",
    "StateTensorSpec",
    "TorchvisionBackbone",
    "WeightsError",
    "WeightsVersion",
    "build_encoder",
    "build_model",
    "checkpoint_bytes",
    "decode_image",
    "default_spec",
    "load_inference_model",
    "load_model",
    "prepare_frames",
    "read_state_dict",
    "save_checkpoint",
    "select_device",
    "set_threads",
    "weights_hash",
]

_MODULES = {  # name -> the module that defines it
    "CheckpointError": ".checkpoint",
    "checkpoint_bytes": ".checkpoint",
    "load_model": ".checkpoint",
    "read_state_dict": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "weights_hash": ".checkpoint",
    "LSTMCore": ".core",
    "ENCODERS": ".encoders",
    "ImpalaCNN": ".encoders",
    "NatureCNN": ".encoders",
    "TorchvisionBackbone": ".encoders",
    "build_encoder": ".encoders",
    "decode_image": ".images",
    "ArchitectureMismatchError": ".live_weights",
    "StagedWeights": ".live_weights",
    "WeightsError": ".live_weights",
    "WeightsVersion": ".live_weights",
    "EmbeddingModel": ".model",
    "State": ".model",
    "StateTensorSpec": ".model",
    "build_model": ".model",
    "FrameError": ".preprocessing",
    "prepare_frames": ".preprocessing",
    "Registry": ".registry",
    "InferenceModel": ".runtime",
    "load_inference_model": ".runtime",
    "select_device": ".runtime",
    "set_threads": ".runtime",
    "CoreSpec": ".spec",
    "EncoderSpec": ".spec",
    "InputSpec": ".spec",
    "ModelSpec": ".spec",
    "PixelFormat": ".spec",
    "default_spec": ".spec",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name], __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
