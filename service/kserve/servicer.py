"""The KServe v2 servicer: Triton's `inference.GRPCInferenceService`, converted into `InferenceCore` calls.

The message classes live under the private package `vidlstm.kserve`; the handlers are registered
under Triton's wire name, so `tritonclient` and `perf_analyzer` talk to this server unchanged. A
request with a `sequence_id` steps that sequence's server-held state by one frame; a request without
one embeds each of its frames as a one-step episode from zero state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import message_factory

from vidlstm.kserve import grpc_service_pb2 as kpb
from vidlstm.models import PixelFormat, prepare_frames
from vidlstm.v1 import encoder_pb2 as pb

from ..convert import FrameLimits
from ..drain import DrainGate
from ..errors import InvalidArgument, ServiceError
from ..identity import authenticated_client
from ..inference import InferenceCore, SequenceInput, SequenceOutput
from ..sequences import SequenceKey, shown
from ..unary import status_on_error
from .model import KServeModel
from .statistics import model_statistics
from .tensors import check_outputs, infer_response, input_frames, sequence_control

__all__ = ["WIRE_SERVICE", "KServeServicer"]

WIRE_SERVICE = "inference.GRPCInferenceService"  # its probes stay open: see auth.OPEN_SERVICES
log = logging.getLogger(__name__)
_SERVICE = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
_NOT_IMPLEMENTED = {
    "RepositoryModel": "it serves the one model it loaded at start",
    "SharedMemory": "send tensor contents in the request instead of shared memory",
    "TraceSetting": "there is no request tracing; the Prometheus metrics (--metrics-port) time every RPC",
    "LogSettings": "set logging with the server's settings (--log-level, --log-format)",
}


class KServeServicer:
    """The KServe v2 protocol over the inference core; `register` adds it to a server."""

    def __init__(
        self,
        core: InferenceCore,
        model: KServeModel,
        *,
        limits: FrameLimits,
        default_deadline: float,
        max_in_flight_per_stream: int,
        drain: DrainGate,
    ) -> None:
        self.core = core
        self.model = model
        self.limits = limits
        self.default_deadline = default_deadline
        self.max_in_flight_per_stream = max_in_flight_per_stream
        self.drain = drain
        self.failed = 0  # KServe requests that failed, refused ones included: Triton's fail count

    def register(self, server: grpc.aio.Server) -> None:
        """Every method of the service: the ones below, the rest answering UNIMPLEMENTED with why."""
        handlers = {}
        for method in _SERVICE.methods:
            behavior = getattr(self, method.name, None) or _unimplemented(method.name)
            make = (
                grpc.stream_stream_rpc_method_handler
                if method.client_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            handlers[method.name] = make(
                behavior,
                request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
                response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString,
            )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(WIRE_SERVICE, handlers),))

    # -- health and metadata ---------------------------------------------------------------------

    async def ServerLive(self, request: kpb.ServerLiveRequest, context: Any) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: kpb.ServerReadyRequest, context: Any) -> kpb.ServerReadyResponse:
        return kpb.ServerReadyResponse(ready=not self.drain.closed)

    async def ModelReady(self, request: kpb.ModelReadyRequest, context: Any) -> kpb.ModelReadyResponse:
        """Open like ServerReady (KServe uses it as a readiness probe): false while draining."""
        serves = self.model.serves(request.name, request.version)
        return kpb.ModelReadyResponse(ready=serves and not self.drain.closed)

    async def ServerMetadata(
        self, request: kpb.ServerMetadataRequest, context: Any
    ) -> kpb.ServerMetadataResponse:
        return self.model.server_metadata()

    @status_on_error
    async def ModelMetadata(
        self, request: kpb.ModelMetadataRequest, context: Any
    ) -> kpb.ModelMetadataResponse:
        self.model.check(request.name, request.version)
        return self.model.metadata()

    @status_on_error
    async def ModelConfig(self, request: kpb.ModelConfigRequest, context: Any) -> kpb.ModelConfigResponse:
        self.model.check(request.name, request.version)
        return kpb.ModelConfigResponse(config=self.model.config())

    @status_on_error
    async def ModelStatistics(
        self, request: kpb.ModelStatisticsRequest, context: Any
    ) -> kpb.ModelStatisticsResponse:
        if request.name:
            self.model.check(request.name, request.version)
        statistics = model_statistics(self.model.name, self.core.batcher.stats, self.failed)
        return kpb.ModelStatisticsResponse(model_stats=[statistics])

    async def RepositoryIndex(
        self, request: kpb.RepositoryIndexRequest, context: Any
    ) -> kpb.RepositoryIndexResponse:
        return self.model.index()

    # -- inference -------------------------------------------------------------------------------

    @status_on_error
    async def ModelInfer(self, request: kpb.ModelInferRequest, context: Any) -> kpb.ModelInferResponse:
        return await self._infer(request, context)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[kpb.ModelInferRequest], context: Any
    ) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        """Requests run concurrently (up to `max_in_flight_per_stream`), each answered when done;
        a refused one is answered in-band with `error_message` and the stream stays open."""
        responses: asyncio.Queue[kpb.ModelStreamInferResponse | None] = asyncio.Queue()
        room = asyncio.Semaphore(self.max_in_flight_per_stream)
        answering: set[asyncio.Task[None]] = set()

        async def answer(request: kpb.ModelInferRequest) -> None:
            try:
                response = await self._infer(request, context)
                response.parameters["triton_final_response"].bool_param = True  # one response a request
                responses.put_nowait(kpb.ModelStreamInferResponse(infer_response=response))
            except Exception as error:  # a ServiceError, or a fault of ours: answered, never dropped
                if not isinstance(error, ServiceError):
                    log.exception("ModelStreamInfer request %r failed", request.id)
                refused = kpb.ModelInferResponse(model_name=request.model_name, id=request.id)
                responses.put_nowait(
                    kpb.ModelStreamInferResponse(error_message=str(error), infer_response=refused)
                )
            finally:
                room.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await room.acquire()
                    # Tasks start in creation order, so each request takes its place in its
                    # sequence's line in the order the stream delivered it.
                    task = asyncio.create_task(answer(request))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
                while answering:
                    await asyncio.wait(list(answering))
            finally:
                responses.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await responses.get()) is not None:
                yield response
            reader.result()  # the client's stream failed: end the call with that error
        finally:
            for task in (reader, *answering):
                task.cancel()

    async def _infer(self, request: kpb.ModelInferRequest, context: Any) -> kpb.ModelInferResponse:
        try:
            return await self._answer(request, context)
        except ServiceError:
            self.failed += 1
            raise

    async def _answer(self, request: kpb.ModelInferRequest, context: Any) -> kpb.ModelInferResponse:
        """Everything before the sequence's place in line is taken runs without awaiting."""
        self.model.check(request.model_name, request.model_version)
        control = sequence_control(request.parameters)
        frames, pixel_format = input_frames(request, self.model, self.limits)
        check_outputs(request, self.model)
        if control.sequence_id is None:
            output = await self._encode_one_step_episodes(frames, pixel_format)
            return infer_response(request, self.model, output.embeddings, output.version)
        if len(frames) != 1:
            raise InvalidArgument(
                f"inference request for sequence {shown(control.sequence_id)} must specify batch-size 1 (one "
                f"frame, got {len(frames)}): a vector env uses one sequence id per env"
            )
        key = SequenceKey(authenticated_client(context), control.sequence_id)
        with self.core.sequences.line_up(key) as ticket:
            prepared = await self._prepare(frames, pixel_format)
            output = await self.core.sequence_step(ticket, prepared, start=control.start, end=control.end)
        return infer_response(request, self.model, output.embeddings, output.version)

    async def _encode_one_step_episodes(
        self, frames: np.ndarray, pixel_format: PixelFormat
    ) -> SequenceOutput:
        """Each frame a one-step episode, all in one call: embeddings [N, D] on one version."""
        prepared = await self._prepare(frames, pixel_format)
        start = np.ones(1, dtype=bool)
        sequences = [SequenceInput(frame[None], start) for frame in prepared]
        outputs = await self.core.encode(sequences, return_state=False, dtype=pb.FLOAT32)
        embeddings = np.stack([output.embeddings[0] for output in outputs])
        return SequenceOutput(embeddings, None, outputs[0].version)

    async def _prepare(self, frames: np.ndarray, pixel_format: PixelFormat) -> np.ndarray:
        """uint8 [N, H, W, C] -> model input; converting or resizing goes to the decode pool."""
        spec = self.core.input_spec
        target = PixelFormat.GRAY if spec.grayscale else PixelFormat.RGB
        if pixel_format is target and frames.shape[1:3] == (spec.height, spec.width):
            return prepare_frames(frames, pixel_format, spec)
        return await self.core.offload(prepare_frames, frames, pixel_format, spec)


def _unimplemented(method: str) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
    why = next((why for part, why in _NOT_IMPLEMENTED.items() if part in method), "")
    message = f"vidlstm does not implement {WIRE_SERVICE}/{method}" + (f": {why}" if why else "")

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return refuse
