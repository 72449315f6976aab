"""KServe v2 helpers for the tests: Triton's own client (tritonclient), as a Triton user calls it."""

from __future__ import annotations

import grpc
import numpy as np
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from vidlstm.kserve import grpc_service_pb2 as kpb

MODEL, INPUT, OUTPUT = "vidlstm", "FRAMES", "EMBEDDING"  # the defaults of the kserve_* settings

__all__ = ["INPUT", "MODEL", "OUTPUT", "InferenceServerException", "frames_input", "raw_infer", "step"]


def frames_input(frames: np.ndarray, name: str = INPUT) -> tg.InferInput:
    """uint8 frames [N, H, W, C] as the request's input tensor (raw contents)."""
    tensor = tg.InferInput(name, list(frames.shape), "UINT8")
    tensor.set_data_from_numpy(np.ascontiguousarray(frames))
    return tensor


def step(
    client: tg.InferenceServerClient,
    sequence_id: int | str,
    frame: np.ndarray,
    *,
    start: bool = False,
    end: bool = False,
    headers: dict[str, str] | None = None,
) -> np.ndarray:
    """One frame [H, W, C] of a server-held sequence -> its embedding [D]."""
    result = client.infer(
        MODEL,
        [frames_input(frame[None])],
        sequence_id=sequence_id,
        sequence_start=start,
        sequence_end=end,
        headers=headers,
    )
    embedding = result.as_numpy(OUTPUT)
    assert embedding is not None
    return embedding[0]


def raw_infer(address: str, request: kpb.ModelInferRequest) -> kpb.ModelInferResponse:
    """ModelInfer with raw grpcio, for requests tritonclient will not build (typed contents, bad ones)."""
    with grpc.insecure_channel(address) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=kpb.ModelInferRequest.SerializeToString,
            response_deserializer=kpb.ModelInferResponse.FromString,
        )
        return infer(request, timeout=30)  # type: ignore[no-any-return]
