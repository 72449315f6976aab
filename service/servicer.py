"""The Encoder servicer: checks and converts messages, hands work to the batcher, maps errors.

Every client mistake becomes a `ServiceError` with a status code and a message that says what to
fix; on a stream, a refused request is answered with `StreamResponse.error` and changes nothing,
so the stream and its other envs carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import wraps
from typing import Any, TypeVar

import grpc
import numpy as np

from vidlstm.models import InferenceModel
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.wire import tensor_to_proto

from .batcher import Batcher
from .convert import (
    FrameLimits,
    ResponseBudget,
    embedding_dtype,
    frames_need_work,
    frames_to_model_input,
    state_from_proto,
    state_to_proto,
)
from .engine import Job, JobResult
from .errors import InvalidArgument, ServiceError
from .model_info import model_info
from .streams import StreamRegistry, StreamState
from .video import VideoLimits, VideoService

__all__ = ["EncoderServicer"]

log = logging.getLogger(__name__)
Response = TypeVar("Response")


def _status_on_error(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]:
    """Turns a `ServiceError` raised by a unary handler into its status code and message, and gives
    calls that set no deadline the server's default one."""

    @wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Response:
        own_deadline = self.default_deadline if context.time_remaining() is None else None
        try:
            async with asyncio.timeout(own_deadline):
                return await handler(self, request, context)
        except ServiceError as error:
            await context.abort(error.code, str(error))
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the call set no deadline and ran past the server's default of {self.default_deadline:g} s",
            )
        raise AssertionError("unreachable: abort raises")

    return wrapper


class EncoderServicer(pb_grpc.EncoderServicer):
    def __init__(
        self,
        model: InferenceModel,
        batcher: Batcher,
        streams: StreamRegistry,
        *,
        limits: FrameLimits,
        video: VideoLimits,
        stream_idle_timeout: float,
        default_deadline: float,
        max_message_bytes: int,
    ) -> None:
        self.model = model
        self.batcher = batcher
        self.streams = streams
        self.limits = limits
        self.stream_idle_timeout = stream_idle_timeout
        self.default_deadline = default_deadline
        self._info = model_info(model, max_batch_size=batcher.max_batch_size)
        self._input_spec = model.model.spec.input
        self._state_specs = model.state_specs
        self._responses = ResponseBudget(
            max_message_bytes,
            model.model.out_size,
            sum(math.prod(s.shape) * s.numpy_dtype.itemsize for s in self._state_specs),
        )
        self._decoders = ThreadPoolExecutor(2, thread_name_prefix="vidlstm-decode")
        self.video = VideoService(model, batcher, streams.pool, self._decoders, video)
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the idle-stream reaper; call from the server's event loop."""
        self._reaper = asyncio.get_running_loop().create_task(self._expire_idle_streams())

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        self._decoders.shutdown(wait=False, cancel_futures=True)

    @property
    def live_envs(self) -> int:
        """Envs whose state the server holds (streams and in-flight Encode calls)."""
        return self.streams.pool.live

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInfo:
        return self._info

    @_status_on_error
    async def Encode(
        self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EncodeResponse:
        if not request.sequences:
            raise InvalidArgument("no sequences: send at least one Sequence with frames")
        dtype = embedding_dtype(request.embedding_dtype)
        capacity = self.streams.pool.capacity
        if len(request.sequences) > capacity:
            raise InvalidArgument(
                f"{len(request.sequences)} sequences in one call; each holds one of the server's "
                f"{capacity} state slots (--state-capacity) while it runs: split the call"
            )
        sequences = []
        total = 0
        for index, sequence in enumerate(request.sequences):
            frames = await self._prepare(sequence.frames)
            total += len(frames)
            if total > self.limits.max_frames:
                raise InvalidArgument(f"more than {self.limits.max_frames} frames in one call; split it")
            starts = _episode_starts(sequence.episode_start, len(frames), f"sequences[{index}]")
            initial = self._state_or_zeros(
                sequence.initial_state if sequence.HasField("initial_state") else None
            )
            sequences.append((frames, starts, initial))
        states = len(sequences) if request.return_state else 0
        self._responses.check(total, dtype, states, "send fewer frames per call")
        slots = self.streams.pool.allocate(len(sequences))
        try:
            jobs = [
                Job.sequence(frames, slot, starts, initial, read_back=request.return_state)
                for (frames, starts, initial), slot in zip(sequences, slots, strict=True)
            ]
            results = await self.batcher.submit_request(jobs)
        finally:
            self.streams.pool.release(slots)
        response = pb.EncodeResponse()
        for result in results:
            assert result.embeddings is not None
            item = response.results.add(embeddings=tensor_to_proto(result.embeddings[:, 0], dtype))
            if result.states is not None:
                item.final_state.CopyFrom(self._state_proto(result.states, 0))
        return response

    async def EncodeStream(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamResponse]:
        try:
            stream = self.streams.open(_client_key(context))
        except ServiceError as error:
            # Take the client's first message before refusing: a stream ended while the client is
            # still writing can reach it as a reset (INTERNAL) instead of this status and message.
            with contextlib.suppress(TimeoutError, StopAsyncIteration):
                await asyncio.wait_for(anext(request_iterator), 1.0)
            await context.abort(error.code, str(error))
        try:
            async for request in request_iterator:
                with self.streams.busy(stream):
                    response = await self._stream_step(stream, request)
                yield response
        except asyncio.CancelledError:
            if not stream.expired:
                raise  # the client went away or the server is stopping
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"stream idle for more than {self.stream_idle_timeout:g} s; its state was dropped",
            )
        finally:
            self.streams.close(stream)

    async def _expire_idle_streams(self) -> None:
        """Runs for the server's life: closes streams idle past `stream_idle_timeout`."""
        period = min(1.0, self.stream_idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            self.streams.expire_idle(self.stream_idle_timeout)

    async def EncodeVideo(
        self, request_iterator: AsyncIterator[pb.VideoRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.VideoResponse]:
        try:
            async for response in self.video.encode(request_iterator):
                yield response
        except ServiceError as error:
            await context.abort(error.code, str(error))

    async def _stream_step(self, stream: StreamState, request: pb.StreamRequest) -> pb.StreamResponse:
        response = pb.StreamResponse(request_id=request.request_id)
        try:
            job, new_envs = await self._stream_job(stream, request)
            result = await self._submit_step(stream, job, new_envs)
        except ServiceError as error:
            response.error.code = error.code.value[0]
            response.error.message = str(error)
            return response
        self.streams.release(stream, list(request.release_env_ids))
        response.env_ids.extend(request.env_ids)
        if result.embeddings is not None:
            dtype = embedding_dtype(request.embedding_dtype)
            response.embeddings.CopyFrom(tensor_to_proto(result.embeddings[0], dtype))
        if result.states is not None:
            for column, env_id in enumerate(request.return_state_env_ids):
                response.states[env_id].CopyFrom(self._state_proto(result.states, column))
        return response

    async def _submit_step(self, stream: StreamState, job: Job, new_envs: list[int]) -> JobResult:
        """Runs a stream step; if it never reaches the model, envs it bound are unbound again, so a
        refused step leaves no env holding a slot whose state was never installed."""
        try:
            return await self.batcher.submit(job)
        except BaseException:
            self.streams.release(stream, new_envs)
            raise

    async def _stream_job(self, stream: StreamState, request: pb.StreamRequest) -> tuple[Job, list[int]]:
        """Checks a stream request completely, then binds its envs: a refused request changes nothing.
        Returns the job and the envs it bound anew (their zero state is installed by the job)."""
        env_ids = list(request.env_ids)
        dtype = embedding_dtype(request.embedding_dtype)
        frames = None
        if request.HasField("frames"):
            frames = await self._prepare(request.frames)
            if len(env_ids) != len(frames):
                raise InvalidArgument(
                    f"{len(frames)} frames but {len(env_ids)} env_ids; send one id per frame"
                )
        elif env_ids:
            raise InvalidArgument("env_ids without frames; send frames or leave env_ids empty")
        if len(set(env_ids)) != len(env_ids):
            raise InvalidArgument(f"env_ids must be unique within a request, got {env_ids}")
        starts = _episode_starts(request.episode_start, len(env_ids), "request")
        installs = {env: self._state_or_zeros(state) for env, state in request.set_states.items()}
        known = set(stream.slots) | set(env_ids) | set(installs)
        missing = [e for e in request.return_state_env_ids if e not in known]
        if missing:
            raise InvalidArgument(f"return_state_env_ids {missing} name envs this stream has not stepped")
        if len(set(request.return_state_env_ids)) != len(request.return_state_env_ids):
            raise InvalidArgument("return_state_env_ids must be unique")
        self._responses.check(
            len(env_ids), dtype, len(request.return_state_env_ids), "step or read fewer envs per message"
        )
        new_envs = self.streams.bind(stream, env_ids + list(installs))
        for env in new_envs:
            installs.setdefault(env, self._state_or_zeros(None))
        install_slots = self.streams.slots_of(stream, list(installs))
        job = Job.step(
            None if frames is None else frames[None],
            self.streams.slots_of(stream, env_ids),
            starts[None],
            dict(zip(install_slots, installs.values(), strict=True)),
            self.streams.slots_of(stream, list(request.return_state_env_ids)),
        )
        return job, new_envs

    async def _prepare(self, frames: pb.Frames) -> np.ndarray:
        """Frames -> model input; decoding and resizing go to worker threads off the event loop."""
        if not frames_need_work(frames, self._input_spec):
            return frames_to_model_input(frames, self._input_spec, self.limits)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._decoders, frames_to_model_input, frames, self._input_spec, self.limits
        )

    def _state_or_zeros(self, state: pb.State | None) -> dict[str, np.ndarray]:
        """Per-env state from the wire, or zeros (a fresh episode) when none was sent."""
        if state is None:
            return {s.name: np.zeros(s.shape, dtype=s.numpy_dtype) for s in self._state_specs}
        return state_from_proto(state, self._state_specs, self.model.weights_hash)

    def _state_proto(self, states: dict[str, np.ndarray], column: int) -> pb.State:
        return state_to_proto({k: v[:, column] for k, v in states.items()}, self.model.weights_hash)


def _episode_starts(values: Any, count: int, where: str) -> np.ndarray:
    if len(values) not in (0, count):
        raise InvalidArgument(f"{where}: episode_start has {len(values)} values for {count} frames")
    return np.array(values, dtype=bool) if len(values) else np.zeros(count, dtype=bool)


def _client_key(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who a stream counts against: its bearer token (hashed), else its peer's address."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return "token:" + hashlib.sha256(str(value).encode()).hexdigest()[:16]
    peer = context.peer()  # e.g. "ipv4:127.0.0.1:53422"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
