"""Sessions: one `EncodeStream` per actor, stepping one env or a vector of envs.

    with client.session(num_envs=8, pixel_format="GRAY") as session:
        embeddings = session.step(frames, episode_start)      # [8, H, W, 1] -> [8, D]

The server keeps every env's LSTM state for the life of the stream; `get_state` hands it out (to
checkpoint or move an episode) and `initial_states` / `set_state` install it elsewhere. `weights`
names the weights version the last step ran on (it changes when a learner pushes new weights).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.weights_version import WeightsVersion

from .errors import StreamClosedError, error_for, from_rpc_error
from .state import RecurrentState
from .stream_messages import SessionConfig, StepReply, read_reply, step_request

__all__ = ["AsyncSession", "Session"]

Starts = bool | Sequence[bool] | np.ndarray | None
Metadata = tuple[tuple[str, str], ...]


class _SessionBase:
    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self._ids = itertools.count()
        self._pending_states = dict(config.initial_states)
        self._closed = False
        self.weights: WeightsVersion | None = None  # the weights the last step ran on

    def set_state(self, state: RecurrentState, env_id: int = 0) -> None:
        """Installs `state` for the env before its next step."""
        self._pending_states[env_id] = state

    def _step_request(
        self, frames: np.ndarray | None, episode_start: Starts, returns: Sequence[int]
    ) -> pb.StreamRequest:
        if self._closed:
            raise StreamClosedError("this session's stream has ended; open a new session")
        request = step_request(
            self.config,
            frames,
            episode_start,
            request_id=next(self._ids),
            set_states=self._pending_states,
            return_states=returns,
        )
        return request

    def _answered(self, response: pb.StreamResponse) -> StepReply:
        """States set with `set_state` stay pending until a step that carried them is accepted: a
        refused step installs nothing, so the next one carries them again. A step refused for its
        states (the server names `set_states`: another model's, the wrong shape, not finite) drops
        them: sent again, they would be refused again."""
        if response.error.field == "set_states":
            self._pending_states = {}
        reply = read_reply(response)
        self._pending_states = {}
        return reply

    def _result(self, reply: StepReply) -> np.ndarray:
        """A step's embeddings; `weights` becomes the version they ran on (a state read is no step)."""
        self.weights = reply.weights
        return reply.embeddings[0] if self.config.num_envs is None else reply.embeddings


class Session(_SessionBase):
    """Blocking session over a bidirectional stream."""

    def __init__(
        self,
        stub: pb_grpc.EncoderStub,
        config: SessionConfig,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> None:
        super().__init__(config)
        self._requests: queue.SimpleQueue[pb.StreamRequest | None] = queue.SimpleQueue()
        requests = iter(self._requests.get, None)
        self._call: Any = stub.EncodeStream(requests, timeout=timeout, metadata=metadata)
        self._responses: Iterator[pb.StreamResponse] = self._call

    def step(self, frames: np.ndarray, episode_start: Starts = None) -> np.ndarray:
        """One step of every env: embeddings [D] (one env) or [B, D]."""
        return self._result(self._exchange(self._step_request(frames, episode_start, ())))

    def get_state(self, env_id: int = 0) -> RecurrentState:
        """The env's state after its last step, to continue the episode in another stream."""
        return self._exchange(self._step_request(None, None, [env_id])).states[env_id]

    def _exchange(self, request: pb.StreamRequest) -> StepReply:
        self._requests.put(request)
        try:
            response = next(self._responses)
        except grpc.RpcError as error:
            self._closed = True
            raise from_rpc_error(error) from None
        except StopIteration:
            self._closed = True
            raise StreamClosedError("the server ended the stream") from None
        return self._answered(response)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._requests.put(None)
            self._call.cancel()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncSession(_SessionBase):
    """asyncio session: `await session.step(frames, episode_start)`."""

    def __init__(
        self,
        stub: pb_grpc.EncoderStub,
        config: SessionConfig,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> None:
        super().__init__(config)
        self._call: Any = stub.EncodeStream(timeout=timeout, metadata=metadata)

    async def step(self, frames: np.ndarray, episode_start: Starts = None) -> np.ndarray:
        return self._result(await self._exchange(self._step_request(frames, episode_start, ())))

    async def get_state(self, env_id: int = 0) -> RecurrentState:
        return (await self._exchange(self._step_request(None, None, [env_id]))).states[env_id]

    async def _exchange(self, request: pb.StreamRequest) -> StepReply:
        try:
            await self._call.write(request)
            response = await self._call.read()
        except (grpc.RpcError, asyncio.InvalidStateError):
            # A write to a stream the server already ended fails with a generic error from gRPC
            # core ("Internal error from Core"); the call's own status says what really happened.
            self._closed = True
            raise error_for(await self._call.code(), await self._call.details()) from None
        if response is grpc.aio.EOF:
            self._closed = True
            raise error_for(
                await self._call.code(), await self._call.details() or "the server ended the stream"
            )
        return self._answered(response)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._call.done_writing()
            self._call.cancel()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
