"""The EncodeVideo RPC: resolve or receive the video, decode in a worker thread, embed chunk by
chunk through the shared batcher (one pool slot carries the LSTM state), answer as it goes."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from vidlstm.models import InferenceModel
from vidlstm.models.video import VideoError, probe_video
from vidlstm.models.video_chunks import FrameChunk, prepared_chunks
from vidlstm.selection import FrameSelection
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.wire import WIRE_DTYPES, selection_from_proto, tensor_to_proto, weights_to_proto

from .batcher import Batcher
from .convert import ResponseBudget, embedding_dtype, state_to_proto
from .engine import Job, PerEnvState, zero_state
from .errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from .pool import StatePool

__all__ = ["VideoLimits", "VideoService", "resolve_under_root"]


@dataclass(frozen=True)
class VideoLimits:
    root: Path | None = None  # where `path` requests may read; None: uploads only
    max_bytes: int = 2 << 30
    chunk_frames: int = 128
    decoder: str = "pyav"
    decoder_threads: int = 0
    idle_timeout: float = 300.0  # an upload that sends nothing this long is dropped
    max_message_bytes: int = 64 << 20  # the server's gRPC message limit: bounds chunk_frames
    decoders: int = 2  # videos decoding at once; more wait for a turn, chunk by chunk


def resolve_under_root(root: Path | None, requested: str) -> Path:
    """The file `requested` names under `root`, refusing `..`, paths outside and escaping symlinks."""
    if root is None:
        raise FailedPrecondition("this server has no --video-root; upload the video bytes instead")
    if not requested or "\0" in requested:
        raise InvalidArgument("empty or malformed video path")
    if ".." in PurePath(requested).parts:
        raise InvalidArgument(f"video path {requested!r} contains '..'; name a file under the video root")
    base = root.resolve()
    resolved = (base / requested).resolve()  # an absolute `requested` replaces base: checked below
    if not resolved.is_relative_to(base):
        raise PermissionDenied(f"video path {requested!r} is outside the server's video root")
    if not resolved.is_file():
        raise NotFound(f"no video file {requested!r} under the video root")
    return resolved


class VideoService:
    """Videos decode in a pool of their own (`limits.decoders` threads): a chunk of video takes
    its thread for the whole chunk, and RL streams whose frames need decoding or resizing must not
    wait behind it in theirs."""

    def __init__(self, model: InferenceModel, batcher: Batcher, pool: StatePool, limits: VideoLimits) -> None:
        self.model = model
        self.batcher = batcher
        self.pool = pool
        self.limits = limits
        largest = self._largest_chunk(pb.FLOAT32)
        if limits.chunk_frames > largest:
            raise ValueError(
                f"--video-chunk-frames {limits.chunk_frames}: responses would be larger than "
                f"--max-message-bytes {limits.max_message_bytes}; use --video-chunk-frames <= {largest} "
                "or raise --max-message-bytes"
            )
        self.decoders = ThreadPoolExecutor(limits.decoders, thread_name_prefix="vidlstm-video")

    def close(self) -> None:
        self.decoders.shutdown(wait=False, cancel_futures=True)

    async def encode(self, requests: AsyncIterator[pb.VideoRequest]) -> AsyncIterator[pb.VideoResponse]:
        first = await anext(requests, None)
        if first is None:
            raise InvalidArgument("no request: send VideoOptions with a path or the first bytes")
        sampling, dtype = _sampling(first.options), embedding_dtype(first.options.embedding_dtype)
        chunk_frames = self._chunk_frames(first.options.chunk_frames, dtype)
        if first.path:
            if first.data:
                raise InvalidArgument("send either a path or the video bytes, not both")
            if await self._next_upload_chunk(requests) is not None:
                raise InvalidArgument("a path request is one message; send video bytes only in uploads")
            async for response in self._encode_file(
                resolve_under_root(self.limits.root, first.path), sampling, chunk_frames, dtype, first.options
            ):
                yield response
            return
        upload = await self._receive(first, requests)
        try:
            async for response in self._encode_file(upload, sampling, chunk_frames, dtype, first.options):
                yield response
        finally:
            upload.unlink(missing_ok=True)

    def _chunk_frames(self, requested: int, dtype: pb.DType) -> int:
        """Frames per response; refused up front when such a response would not fit in a message."""
        chunk_frames = requested or self.limits.chunk_frames
        largest = self._largest_chunk(dtype)  # >= 1: the server's default chunk was checked at start
        if chunk_frames > largest:
            raise InvalidArgument(
                f"chunk_frames {chunk_frames} would make responses larger than the server's message "
                f"limit of {self.limits.max_message_bytes} bytes; use chunk_frames <= {largest}"
            )
        return chunk_frames

    def _largest_chunk(self, dtype: pb.DType) -> int:
        """The most frames one response may carry under the message limit."""
        # Per frame: the embedding, a double timestamp, an int64 index (a varint of up to 10 bytes).
        frame_bytes = self.model.model.out_size * WIRE_DTYPES[dtype].itemsize + 8 + 10
        return (self.limits.max_message_bytes - ResponseBudget.OVERHEAD_BYTES) // frame_bytes

    async def _receive(self, first: pb.VideoRequest, requests: AsyncIterator[pb.VideoRequest]) -> Path:
        """Spools the uploaded bytes to a temporary file (containers need seeking to decode)."""
        fd, name = tempfile.mkstemp(prefix="vidlstm-upload-", suffix=".video")
        path = Path(name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as file:
                request: pb.VideoRequest | None = first
                while request is not None:
                    if request.path:
                        raise InvalidArgument("path is only allowed in the first message")
                    if request is not first and request.HasField("options"):
                        raise InvalidArgument("options are only read from the first message; send them there")
                    size += len(request.data)
                    if size > self.limits.max_bytes:
                        raise ResourceExhausted(
                            f"video upload over the limit of {self.limits.max_bytes} bytes; "
                            "raise --max-video-bytes or send a path under --video-root"
                        )
                    file.write(request.data)
                    request = await self._next_upload_chunk(requests)
            if size == 0:
                raise InvalidArgument(
                    "empty upload: the video file has no bytes (send them in VideoRequest.data)"
                )
            return path
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    async def _next_upload_chunk(self, requests: AsyncIterator[pb.VideoRequest]) -> pb.VideoRequest | None:
        try:
            return await asyncio.wait_for(anext(requests, None), self.limits.idle_timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"upload stalled: nothing received for {self.limits.idle_timeout:g} s; upload dropped"
            ) from None

    async def _encode_file(
        self,
        path: Path,
        sampling: FrameSelection,
        chunk_frames: int,
        dtype: pb.DType,
        options: pb.VideoOptions,
    ) -> AsyncIterator[pb.VideoResponse]:
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(self.decoders, probe_video, path)
        except VideoError as error:
            raise InvalidArgument(str(error).replace(str(path), "video")) from None
        chunks = prepared_chunks(
            path,
            self.model.model.spec.input,
            sampling,
            chunk_frames=chunk_frames,
            backend=self.limits.decoder,
            threads=self.limits.decoder_threads,
        )
        (slot,) = self.pool.allocate(1)
        try:
            frames = 0
            # The video starts from zero state, installed with its first chunk.
            zero: PerEnvState | None = zero_state(self.model.state_specs)
            while (chunk := await loop.run_in_executor(self.decoders, _next_chunk, chunks, path)) is not None:
                starts = np.zeros(len(chunk.frames), bool)
                result = await self.batcher.submit(Job.sequence(chunk.frames, slot, starts, zero))
                zero = None
                assert result.embeddings is not None
                frames += len(chunk.frames)
                yield pb.VideoResponse(
                    embeddings=tensor_to_proto(result.embeddings[:, 0], dtype),
                    timestamps_ms=chunk.timestamps_ms.tolist(),
                    frame_indices=chunk.indices.tolist(),
                    weights=weights_to_proto(result.version),
                )
            summary = pb.VideoSummary(
                frames=frames, width=info.width, height=info.height, fps=info.fps, codec=info.codec
            )
            if options.return_state:
                # With no frames sampled, nothing installed the zero state yet: this job does.
                installs = {} if zero is None else {slot: zero}
                read = Job.step(None, [], np.zeros((1, 0), bool), installs, [slot])
                result = await self.batcher.submit(read)
                assert result.states is not None
                state = {k: v[:, 0] for k, v in result.states.items()}
                made_by = result.state_versions[0]
                summary.final_state.CopyFrom(state_to_proto(state, made_by, self.model.lineage))
            yield pb.VideoResponse(summary=summary)
        finally:
            self.pool.release([slot])


def _next_chunk(chunks: Iterator[FrameChunk], path: Path) -> FrameChunk | None:
    try:
        return next(chunks, None)
    except VideoError as error:
        raise InvalidArgument(str(error).replace(str(path), "video")) from None


def _sampling(options: pb.VideoOptions) -> FrameSelection:
    try:
        return selection_from_proto(options)
    except ValueError as error:
        raise InvalidArgument(f"bad VideoOptions: {error}") from None
