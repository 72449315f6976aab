"""The v1 Encoder servicer: converts messages into `InferenceCore` calls and back, maps errors.

Every client mistake becomes a `ServiceError` with a status code and a message that says what to
fix; on a stream, a refused request is answered with `StreamResponse.error` and changes nothing,
so the stream and its other envs carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np

from vidlstm.models import WeightsVersion
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.wire import tensor_to_proto, weights_to_proto

from .convert import (
    FrameLimits,
    embedding_dtype,
    frames_need_work,
    frames_to_model_input,
    state_from_proto,
    state_to_proto,
)
from .engine import PerEnvState
from .errors import InvalidArgument, ServiceError
from .identity import client_key
from .inference import InferenceCore, SequenceInput, StepInput
from .model_info import model_info
from .push import AdminCredentials, receive_weights
from .streams import StreamState
from .unary import status_on_error

__all__ = ["EncoderServicer"]

log = logging.getLogger(__name__)


class EncoderServicer(pb_grpc.EncoderServicer):
    """The v1 API: converts each message into an `InferenceCore` call and the result back."""

    def __init__(
        self,
        core: InferenceCore,
        *,
        limits: FrameLimits,
        default_deadline: float,
        admins: AdminCredentials,
        max_weights_bytes: int,
    ) -> None:
        self.core = core
        self.limits = limits
        self.default_deadline = default_deadline
        self.admins = admins
        self.max_weights_bytes = max_weights_bytes

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInfo:
        return model_info(
            self.core.model,
            self.core.history,
            max_batch_size=self.core.batcher.max_batch_size,
            accepts_weights=self.admins.enabled,
        )

    @status_on_error
    async def PushWeights(
        self,
        request_iterator: AsyncIterator[pb.PushWeightsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.PushWeightsResponse:
        self.admins.check(context)
        source = f"push from {context.peer()}"
        try:
            upload = await receive_weights(request_iterator, max_bytes=self.max_weights_bytes)
        except ServiceError as error:  # too large, empty, malformed: refused like bad weights
            raise self.core.weights.refuse(source, error) from None
        installed = await self.core.weights.install(
            upload.data,
            learner_step=upload.learner_step,
            sha256=upload.sha256,
            received_at=upload.received_at,
            source=source,
        )
        return pb.PushWeightsResponse(
            weights=weights_to_proto(installed.version), install_ms=installed.install_seconds * 1000
        )

    @status_on_error
    async def Encode(
        self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EncodeResponse:
        if not request.sequences:
            raise InvalidArgument("no sequences: send at least one Sequence with frames")
        dtype = embedding_dtype(request.embedding_dtype)
        sequences = []
        total = 0
        for index, sequence in enumerate(request.sequences):
            frames = await self._prepare(sequence.frames)
            total += len(frames)
            if total > self.limits.max_frames:
                raise InvalidArgument(f"more than {self.limits.max_frames} frames in one call; split it")
            starts = _episode_starts(sequence.episode_start, len(frames), f"sequences[{index}]")
            initial = self._state(sequence.initial_state)[0] if sequence.HasField("initial_state") else None
            sequences.append(SequenceInput(frames, starts, initial))
        outputs = await self.core.encode(sequences, return_state=request.return_state, dtype=dtype)
        response = pb.EncodeResponse(weights=weights_to_proto(outputs[0].version))
        for output in outputs:
            item = response.results.add(embeddings=tensor_to_proto(output.embeddings, dtype))
            if output.final_state is not None:
                item.final_state.CopyFrom(self._state_proto(output.final_state, output.version))
        return response

    async def EncodeStream(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamResponse]:
        try:
            session = self.core.open_session(client_key(context))
        except ServiceError as error:
            # Take the client's first message before refusing: a stream ended while the client is
            # still writing can reach it as a reset (INTERNAL) instead of this status and message.
            with contextlib.suppress(TimeoutError, StopAsyncIteration):
                await asyncio.wait_for(anext(request_iterator), 1.0)
            await context.abort(error.code, str(error))
        try:
            async for request in request_iterator:
                with self.core.serving(session):
                    response = await self._stream_step(session, request)
                yield response
        except asyncio.CancelledError:
            if not session.expired:
                raise  # the client went away or the server is stopping
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"stream idle for more than {self.core.stream_idle_timeout:g} s; its state was dropped",
            )
        finally:
            self.core.close_session(session)

    async def EncodeVideo(
        self, request_iterator: AsyncIterator[pb.VideoRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.VideoResponse]:
        try:
            async for response in self.core.video.encode(request_iterator):
                yield response
        except ServiceError as error:
            await context.abort(error.code, str(error))

    async def _stream_step(self, session: StreamState, request: pb.StreamRequest) -> pb.StreamResponse:
        """One message: refused in-band (the stream stays open), or answered."""
        response = pb.StreamResponse(request_id=request.request_id)
        try:
            dtype = embedding_dtype(request.embedding_dtype)
            output = await self.core.step(session, await self._step_input(request), dtype)
        except ServiceError as error:
            response.error.code = error.code.value[0]
            response.error.message = str(error)
            response.error.field = error.field
            return response
        response.env_ids.extend(request.env_ids)
        response.weights.CopyFrom(weights_to_proto(output.version))
        if output.embeddings is not None:
            response.embeddings.CopyFrom(tensor_to_proto(output.embeddings, dtype))
        for env_id, state in output.states.items():
            response.states[env_id].CopyFrom(self._state_proto(state, output.state_versions[env_id]))
        return response

    async def _step_input(self, request: pb.StreamRequest) -> StepInput:
        frames = await self._prepare(request.frames) if request.HasField("frames") else None
        try:
            states = {env: self._state(state) for env, state in request.set_states.items()}
        except ServiceError as error:
            error.field = "set_states"  # a state never accepted: the client must not send it again
            raise
        return StepInput(
            frames,
            list(request.env_ids),
            _episode_starts(request.episode_start, len(request.env_ids), "request"),
            {env: arrays for env, (arrays, _) in states.items()},
            list(request.return_state_env_ids),
            list(request.release_env_ids),
            {env: made_by for env, (_, made_by) in states.items()},
        )

    async def _prepare(self, frames: pb.Frames) -> np.ndarray:
        """Frames -> model input; decoding and resizing go to the decode pool, off the event loop."""
        spec = self.core.input_spec
        if not frames_need_work(frames, spec):
            return frames_to_model_input(frames, spec, self.limits)
        return await self.core.offload(frames_to_model_input, frames, spec, self.limits)

    def _state(self, state: pb.State) -> tuple[PerEnvState, WeightsVersion]:
        return state_from_proto(state, self.core.state_specs, self.core.history)

    def _state_proto(self, state: PerEnvState, version: WeightsVersion) -> pb.State:
        return state_to_proto(state, version, self.core.history.lineage)


def _episode_starts(values: Any, count: int, where: str) -> np.ndarray:
    if len(values) not in (0, count):
        raise InvalidArgument(f"{where}: episode_start has {len(values)} values for {count} frames")
    return np.array(values, dtype=bool) if len(values) else np.zeros(count, dtype=bool)
