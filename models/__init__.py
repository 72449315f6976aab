"""vidlstm.models: CNN encoders, the LSTM core, preprocessing, specs and checkpoints.

Knows torch, torchvision, numpy and image/video decoding; nothing of gRPC or settings.
"""

from .checkpoint import CheckpointError, load_model, read_state_dict, save_checkpoint, weights_hash
from .core import LSTMCore
from .encoders import ENCODERS, ImpalaCNN, NatureCNN, TorchvisionBackbone, build_encoder
from .images import decode_image
from .model import EmbeddingModel, State, StateTensorSpec, build_model
from .preprocessing import FrameError, prepare_frames
from .registry import Registry
from .runtime import InferenceModel, load_inference_model, select_device, set_threads
from .spec import CoreSpec, EncoderSpec, InputSpec, ModelSpec, PixelFormat, default_spec

__all__ = [
    "ENCODERS",
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
    "State",
    "StateTensorSpec",
    "TorchvisionBackbone",
    "build_encoder",
    "build_model",
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
