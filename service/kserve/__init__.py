"""The KServe v2 gRPC front-end (Triton's `inference.GRPCInferenceService`) over the inference core."""

from .model import KServeModel
from .servicer import WIRE_SERVICE, KServeServicer

__all__ = ["WIRE_SERVICE", "KServeModel", "KServeServicer"]
