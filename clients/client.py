"""`EncoderClient` (blocking) and `AsyncEncoderClient` (asyncio) for the Encoder service.

with EncoderClient("localhost:50051") as client:
    result = client.encode(frames)              # uint8 [T, H, W, C], RGB
    more = client.encode(next_frames, state=result.state)   # continues the sequence
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import grpc

from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.wire import selection_to_proto

from .channel import (
    DEFAULT_KEEPALIVE_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RETRY,
    RetryPolicy,
    Tls,
    call_metadata,
    channel_options,
    open_channel,
)
from .errors import from_rpc_error
from .requests import (
    DTYPES,
    EmbeddingDType,
    EncodeResult,
    FrameInput,
    SequenceInput,
    encode_request,
    encode_results,
)
from .session import AsyncSession, Session
from .state import RecurrentState
from .stream_messages import SessionConfig
from .video import FrameSelection, VideoPart, video_requests
from .weights import PushResult, WeightsSource, push_requests, read_weights

__all__ = ["AsyncEncoderClient", "EncoderClient"]


class _ClientBase:
    """What both clients share: the channel, credentials and call options.

    `timeout` (seconds) is the deadline of each unary call, `video_timeout` of each whole video;
    `tls` secures the channel; `token` is sent as `authorization: Bearer <token>` with every call.
    `lb_policy="round_robin"` spreads unary calls over every address `target` resolves to (a Kubernetes
    headless Service); each stream stays on one server. The default, pick_first, keeps one connection.
    `retry`: how gRPC retries a refused `info`/`encode` call (UNAVAILABLE, RESOURCE_EXHAUSTED) within
    `timeout`; streams and videos are never retried; None: no retries. `keepalive_s`: seconds between
    keepalive pings, so idle streams survive load balancers (None: no pings).
    """

    _asyncio = False

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 60.0,
        video_timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: Tls | None = None,
        token: str | None = None,
        lb_policy: Literal["pick_first", "round_robin"] = "pick_first",
        retry: RetryPolicy | None = DEFAULT_RETRY,
        keepalive_s: float | None = DEFAULT_KEEPALIVE_S,
    ) -> None:
        options = channel_options(max_message_bytes, lb_policy, retry, keepalive_s)
        self.channel = open_channel(target, tls, options, asyncio=self._asyncio)
        self.stub = pb_grpc.EncoderStub(self.channel)
        self.metadata = call_metadata(token)
        self.timeout = timeout
        self.video_timeout = video_timeout

    @staticmethod
    def _session_config(
        num_envs: int | None,
        pixel_format: str,
        dtype: EmbeddingDType,
        initial_states: dict[int, RecurrentState] | None,
    ) -> SessionConfig:
        return SessionConfig(num_envs, pixel_format, dtype, dict(initial_states or {}))

    @staticmethod
    def _video_requests(
        source: Path | str,
        selection: FrameSelection | None,
        server_path: bool,
        return_state: bool,
        dtype: EmbeddingDType,
    ) -> Iterator[pb.VideoRequest]:
        options = selection_to_proto(selection or FrameSelection())
        options.return_state, options.embedding_dtype = return_state, DTYPES[dtype]
        return video_requests(source, options, server_path=server_path)


class EncoderClient(_ClientBase):
    """Blocking client (see `_ClientBase` for the options)."""

    def info(self) -> pb.ModelInfo:
        try:
            return self.stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def encode(
        self,
        frames: FrameInput,
        *,
        episode_start: Sequence[bool] | None = None,
        state: RecurrentState | None = None,
        pixel_format: str = "RGB",
        dtype: EmbeddingDType = "float32",
    ) -> EncodeResult:
        """One sequence: frames [T, H, W, C] uint8 (or encoded images) -> embeddings [T, D] + state."""
        sequence = SequenceInput(frames, episode_start, state)
        return self.encode_many([sequence], pixel_format=pixel_format, dtype=dtype)[0]

    def encode_many(
        self,
        sequences: Sequence[SequenceInput],
        *,
        pixel_format: str = "RGB",
        dtype: EmbeddingDType = "float32",
        return_state: bool = True,
    ) -> list[EncodeResult]:
        """Several independent sequences in one call."""
        request = encode_request(sequences, pixel_format=pixel_format, dtype=dtype, return_state=return_state)
        try:
            response = self.stub.Encode(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return encode_results(response)

    def encode_video(
        self,
        source: Path | str,
        selection: FrameSelection | None = None,
        *,
        server_path: bool = False,
        return_state: bool = False,
        dtype: EmbeddingDType = "float32",
    ) -> Iterator[VideoPart]:
        """Embeds a video file, uploaded in chunks (or, with `server_path`, a path under the server's
        --video-root); yields parts as the server computes them, the last with the summary."""
        requests = self._video_requests(source, selection, server_path, return_state, dtype)
        try:
            for response in self.stub.EncodeVideo(
                requests, timeout=self.video_timeout, metadata=self.metadata
            ):
                yield VideoPart.from_proto(response)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def push_weights(self, source: WeightsSource, *, learner_step: int | None = None) -> PushResult:
        """Installs new weights (a .safetensors file, or its bytes) on the server; needs a client
        made with an admin token (or admin certificate). Returns once they serve."""
        requests = push_requests(read_weights(source), learner_step=learner_step)
        try:
            response = self.stub.PushWeights(requests, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return PushResult.from_proto(response)

    def session(
        self,
        num_envs: int | None = None,
        *,
        pixel_format: str = "RGB",
        dtype: EmbeddingDType = "float32",
        initial_states: dict[int, RecurrentState] | None = None,
    ) -> Session:
        """Opens a stream: `num_envs=None` steps one env ([H, W, C] -> [D]), else B envs at once."""
        config = self._session_config(num_envs, pixel_format, dtype, initial_states)
        return Session(self.stub, config, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EncoderClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncEncoderClient(_ClientBase):
    """asyncio client with the same calls as `EncoderClient`; use inside a running event loop."""

    _asyncio = True

    async def info(self) -> pb.ModelInfo:
        try:
            return await self.stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def encode(
        self,
        frames: FrameInput,
        *,
        episode_start: Sequence[bool] | None = None,
        state: RecurrentState | None = None,
        pixel_format: str = "RGB",
        dtype: EmbeddingDType = "float32",
    ) -> EncodeResult:
        sequence = SequenceInput(frames, episode_start, state)
        return (await self.encode_many([sequence], pixel_format=pixel_format, dtype=dtype))[0]

    async def encode_many(
        self,
        sequences: Sequence[SequenceInput],
        *,
        pixel_format: str = "RGB",
        dtype: EmbeddingDType = "float32",
        return_state: bool = True,
    ) -> list[EncodeResult]:
        request = encode_request(sequences, pixel_format=pixel_format, dtype=dtype, return_state=return_state)
        try:
            response = await self.stub.Encode(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return encode_results(response)

    async def encode_video(
        self,
        source: Path | str,
        selection: FrameSelection | None = None,
        *,
        server_path: bool = False,
        return_state: bool = False,
        dtype: EmbeddingDType = "float32",
    ) -> AsyncIterator[VideoPart]:
        """Embeds a video file (see `EncoderClient.encode_video`): `async for part in ...`."""
        requests = _read_off_the_loop(
            self._video_requests(source, selection, server_path, return_state, dtype)
        )
        try:
            async for response in self.stub.EncodeVideo(
                requests, timeout=self.video_timeout, metadata=self.metadata
            ):
                yield VideoPart.from_proto(response)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def push_weights(self, source: WeightsSource, *, learner_step: int | None = None) -> PushResult:
        """Installs new weights (see `EncoderClient.push_weights`)."""
        data = await asyncio.to_thread(read_weights, source)
        requests = list(push_requests(data, learner_step=learner_step))
        try:
            response = await self.stub.PushWeights(
                iter(requests), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return PushResult.from_proto(response)

    def session(
        self,
        num_envs: int | None = None,
        *,
        pixel_format: str = "RGB",
        dtype: EmbeddingDType = "float32",
        initial_states: dict[int, RecurrentState] | None = None,
    ) -> AsyncSession:
        """Opens a stream (see `EncoderClient.session`)."""
        config = self._session_config(num_envs, pixel_format, dtype, initial_states)
        return AsyncSession(self.stub, config, metadata=self.metadata)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncEncoderClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def _read_off_the_loop(requests: Iterator[pb.VideoRequest]) -> AsyncIterator[pb.VideoRequest]:
    """The upload read chunk by chunk in a worker thread: a large file never blocks the event loop."""
    while (request := await asyncio.to_thread(next, requests, None)) is not None:
        yield request
