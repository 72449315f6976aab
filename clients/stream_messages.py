"""Stream requests and responses for one session step: shared by the sync and asyncio sessions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.weights_version import WeightsVersion
from vidlstm.wire import raw_frames, tensor_from_proto, weights_from_proto

from .errors import from_status_value
from .requests import DTYPES, EmbeddingDType
from .state import RecurrentState

__all__ = ["SessionConfig", "StepReply", "read_reply", "step_request"]


@dataclass(frozen=True)
class SessionConfig:
    """`num_envs=None`: one env, frames [H, W, C] -> embedding [D]; else frames [B, H, W, C] -> [B, D]."""

    num_envs: int | None = None
    pixel_format: str = "RGB"
    dtype: EmbeddingDType = "float32"
    initial_states: dict[int, RecurrentState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_envs is not None and self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1 or None (one env), got {self.num_envs}")

    @property
    def env_ids(self) -> list[int]:
        return list(range(self.num_envs or 1))


@dataclass(frozen=True)
class StepReply:
    embeddings: np.ndarray  # [B, D], or [0, D] for a state-only request
    states: dict[int, RecurrentState]
    weights: WeightsVersion  # the weights the step ran on


def step_request(
    config: SessionConfig,
    frames: np.ndarray | None,
    episode_start: bool | Sequence[bool] | np.ndarray | None,
    *,
    request_id: int,
    set_states: dict[int, RecurrentState] | None = None,
    return_states: Sequence[int] = (),
) -> pb.StreamRequest:
    request = pb.StreamRequest(
        embedding_dtype=DTYPES[config.dtype], request_id=request_id, return_state_env_ids=list(return_states)
    )
    if frames is not None:
        batch = frames[None] if config.num_envs is None else frames
        if config.num_envs is not None and len(batch) != config.num_envs:
            raise ValueError(f"this session has {config.num_envs} envs, got {len(batch)} frames")
        request.frames.CopyFrom(raw_frames(np.asarray(batch), config.pixel_format))
        request.env_ids.extend(config.env_ids)
        if episode_start is not None:
            starts = np.atleast_1d(np.asarray(episode_start, dtype=bool))
            if len(starts) != len(batch):
                raise ValueError(f"episode_start has {len(starts)} values for {len(batch)} envs")
            request.episode_start.extend(starts.tolist())
    for env_id, state in (set_states or {}).items():
        request.set_states[env_id].CopyFrom(state.to_proto())
    return request


def read_reply(response: pb.StreamResponse) -> StepReply:
    """Response -> reply, raising the typed error of a refused request (the stream stays usable)."""
    if response.HasField("error"):
        raise from_status_value(response.error.code, response.error.message)
    embeddings = (
        tensor_from_proto(response.embeddings) if response.HasField("embeddings") else np.zeros((0, 0))
    )
    states = {env: RecurrentState.from_proto(state) for env, state in response.states.items()}
    return StepReply(embeddings, states, weights_from_proto(response.weights))
