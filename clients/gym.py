"""Gymnasium wrappers that replace pixel observations with embeddings from a vidlstm server.

    env = EmbeddingObservation(gym.make("ALE/Pong-v5"), "localhost:50051")
    envs = VectorEmbeddingObservation(gym.make_vec("ALE/Pong-v5", num_envs=8), "localhost:50051")

The stream opens on the first reset; `episode_start` is sent with the first frame of every
episode, so the server's LSTM state (and frame stack) restarts exactly where the episode does. If
the server goes away (a restart), the wrapper reopens its stream with zero state and warns.
"""

from __future__ import annotations

import warnings
from typing import Any, SupportsFloat

import numpy as np

from .client import EncoderClient
from .errors import ServerUnavailableError, StreamClosedError
from .session import Session
from .weights import WeightsVersion

try:
    import gymnasium as gym
    from gymnasium.vector import VectorEnv, VectorWrapper
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError("vidlstm.clients.gym needs gymnasium: pip install 'vidlstm[gym]'") from error

__all__ = ["EmbeddingObservation", "VectorEmbeddingObservation"]

_PIXEL_FORMATS = {1: "GRAY", 3: "RGB"}


class _Encoder:
    """One stream for one or several envs, reopened with zero state when the server restarts."""

    def __init__(
        self, server: str | EncoderClient, frame_shape: tuple[int, ...], num_envs: int | None
    ) -> None:
        channels = frame_shape[2] if len(frame_shape) == 3 else 1
        if len(frame_shape) not in (2, 3) or channels not in _PIXEL_FORMATS:
            raise ValueError(f"observations must be [H, W], [H, W, 1] or [H, W, 3] images, got {frame_shape}")
        self.client = EncoderClient(server) if isinstance(server, str) else server
        self.owns_client = isinstance(server, str)
        self.pixel_format = _PIXEL_FORMATS[channels]
        self.num_envs = num_envs
        self.embedding_size = int(self.client.info().embedding_size)
        self.session: Session | None = None

    def step(self, frames: np.ndarray, episode_start: Any) -> np.ndarray:
        if self.session is None:
            self.session = self.client.session(self.num_envs, pixel_format=self.pixel_format)
        try:
            return self.session.step(frames, episode_start)
        except (ServerUnavailableError, StreamClosedError) as error:
            warnings.warn(
                f"vidlstm stream lost ({error}); reopened with zero LSTM state", RuntimeWarning, stacklevel=3
            )
            self.session = self.client.session(self.num_envs, pixel_format=self.pixel_format)
            return self.session.step(frames, episode_start)

    @property
    def weights(self) -> WeightsVersion | None:
        """The weights the last embedding ran on (None before the first step)."""
        return None if self.session is None else self.session.weights

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.owns_client:
            self.client.close()


def _embedding_space(size: int) -> gym.spaces.Box:
    return gym.spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)


class EmbeddingObservation(gym.ObservationWrapper[np.ndarray, Any, np.ndarray]):
    """Single env: each image observation becomes the server's embedding [D] (float32).

    Args:
        env: an env whose observations are uint8 images [H, W] or [H, W, C] (C = 1 gray, 3 RGB).
        server: "HOST:PORT" or an `EncoderClient`.
    """

    def __init__(self, env: gym.Env[np.ndarray, Any], server: str | EncoderClient) -> None:
        super().__init__(env)
        shape = env.observation_space.shape
        if shape is None:
            raise ValueError("the env's observation space has no shape; it must be an image Box")
        self._encoder = _Encoder(server, shape, None)
        self.observation_space = _embedding_space(self._encoder.embedding_size)
        self._episode_start = True

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        self._episode_start = True
        return super().reset(**kwargs)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        self._episode_start = False
        return super().step(action)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return self._encoder.step(observation, self._episode_start)

    @property
    def weights(self) -> WeightsVersion | None:
        """The weights version the last observation was embedded with: the behaviour policy's
        version an off-policy learner (IMPALA's V-trace) needs."""
        return self._encoder.weights

    def close(self) -> None:
        self._encoder.close()
        super().close()


class VectorEmbeddingObservation(VectorWrapper):
    """Vector env: all sub-env frames go in ONE message per step; embeddings [num_envs, D].

    Follows Gymnasium 1.x next-step autoreset: after a sub-env ends, its next step returns the first
    frame of a new episode, and that is where `episode_start` is sent for it.
    """

    def __init__(self, env: VectorEnv, server: str | EncoderClient) -> None:
        super().__init__(env)
        shape = env.single_observation_space.shape
        if shape is None:
            raise ValueError("the env's observation space has no shape; it must be an image Box")
        self._encoder = _Encoder(server, shape, env.num_envs)
        self.single_observation_space = _embedding_space(self._encoder.embedding_size)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)
        self._ended = np.zeros(env.num_envs, dtype=bool)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets every sub-env: all start a new episode."""
        observations, info = self.env.reset(**kwargs)
        self._ended[:] = False
        return self._encoder.step(observations, np.ones(self.num_envs, bool)), info

    def step(self, actions: Any) -> tuple[np.ndarray, Any, Any, Any, dict[str, Any]]:
        observations, rewards, terminations, truncations, info = self.env.step(actions)
        embeddings = self._encoder.step(observations, self._ended.copy())
        self._ended = np.logical_or(terminations, truncations)
        return embeddings, rewards, terminations, truncations, info

    @property
    def weights(self) -> WeightsVersion | None:
        """The weights version the last observations were embedded with (all envs: one message)."""
        return self._encoder.weights

    def close(self, **kwargs: Any) -> None:
        self._encoder.close()
        super().close(**kwargs)
