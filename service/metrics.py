"""Prometheus metrics: per-RPC counts and latencies (the go-grpc-prometheus names, so stock dashboards
work), batching, and live streams and envs.

Each server owns a registry, so several servers (tests, benchmarks) can live in one process;
`serve` exposes it over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics", "MetricsInterceptor", "start_metrics_http"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        rpc_labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started", "RPCs started", rpc_labels, registry=self.registry)
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs finished, by status code (errors are the codes other than OK)",
            [*rpc_labels, "grpc_code"],
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "RPC duration, start to status (a whole stream for streaming RPCs)",
            rpc_labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_frames = Histogram(
            "vidlstm_batch_frames", "frames per model call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_delay_seconds = Histogram(
            "vidlstm_queue_delay_seconds",
            "time a job waited in the batching queue before its model call",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "vidlstm_model_seconds",
            "duration of one batched model call",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.frames = Counter(
            "vidlstm_frames", "frames embedded (rate() gives frames per second)", registry=self.registry
        )
        self.live_streams = Gauge("vidlstm_live_streams", "open EncodeStream calls", registry=self.registry)
        self.live_envs = Gauge(
            "vidlstm_live_envs", "envs whose LSTM state the server holds", registry=self.registry
        )
        self.live_sequences = Gauge(
            "vidlstm_live_sequences", "KServe v2 sequences the server holds state for", registry=self.registry
        )
        self.weights_version = Gauge(
            "vidlstm_weights_version",
            "version of the weights serving (1: those loaded at start)",
            registry=self.registry,
        )
        self.weight_installs = Counter(
            "vidlstm_weight_installs", "new weights installed (pushed or watched)", registry=self.registry
        )
        self.weight_install_failures = Counter(
            "vidlstm_weight_install_failures",
            "new weights refused (not safetensors, another architecture, not finite); the old ones serve",
            registry=self.registry,
        )
        self.weight_install_seconds = Histogram(
            "vidlstm_weight_install_seconds",
            "from a push's last byte (or a watched file's read) to the new weights serving",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_batch(self, frames: int, queue_delays: list[float], model_seconds: float) -> None:
        self.batch_frames.observe(frames)
        self.frames.inc(frames)
        self.model_seconds.observe(model_seconds)
        for delay in queue_delays:
            self.queue_delay_seconds.observe(delay)


def start_metrics_http(metrics: Metrics, host: str, port: int) -> Callable[[], None]:
    """Serves /metrics on a thread; returns the function that stops it."""
    server, thread = start_http_server(port, host, registry=metrics.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every RPC by its final status code, whatever handler or interceptor set it.

    A method's wrapped handler and its metric children are made once, at its first call: per call,
    only the counting is left (a unary call costs far more here than a stream message).
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._wrapped: dict[tuple[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        key = (details.method, handler)
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrapped[key] = self._wrap(handler, details.method)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method_path: str) -> grpc.RpcMethodHandler:
        service, _, method = method_path.lstrip("/").rpartition("/")
        labels = (_rpc_type(handler), service, method)
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            field = "stream_stream" if handler.request_streaming else "unary_stream"
            return handler._replace(**{field: self._streaming(behavior, labels)})
        behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
        field = "stream_unary" if handler.request_streaming else "unary_unary"
        return handler._replace(**{field: self._unary(behavior, labels)})

    def _unary(self, behavior: Any, labels: tuple[str, str, str]) -> Any:
        observe = self._observer(labels)

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with observe(context):
                return await behavior(request, context)

        return observed

    def _streaming(self, behavior: Any, labels: tuple[str, str, str]) -> Any:
        observe = self._observer(labels)

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with observe(context):
                responses = behavior(request, context)
                if inspect.isasyncgen(responses):
                    async for response in responses:
                        yield response
                else:  # a handler that writes with context.write() (or only aborts)
                    await responses

        return observed

    def _observer(
        self, labels: tuple[str, str, str]
    ) -> Callable[[grpc.aio.ServicerContext[Any, Any]], contextlib.AbstractContextManager[None]]:
        started = self.metrics.started.labels(*labels)
        seconds = self.metrics.handling_seconds.labels(*labels)
        handled = self.metrics.handled

        @contextlib.contextmanager
        def observe(context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[None]:
            started.inc()
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                yield
            except BaseException as raised:
                error = raised
                raise
            finally:
                seconds.observe(time.perf_counter() - start)
                handled.labels(*labels, _final_code(context, error).name).inc()

        return observe


def _final_code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> grpc.StatusCode:
    """The code the call ended with: the one a handler or interceptor set, else what its exception means."""
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    return "server_stream" if handler.response_streaming else "unary"
