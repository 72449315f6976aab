"""Building and running the gRPC server.

`create_server` (a started server on a port, for tests and embedding) is kept apart from `serve`
(the process: logging, signals, graceful shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from vidlstm.kserve import grpc_service_pb2 as kpb
from vidlstm.models import InferenceModel, load_inference_model
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc

from .auth import BearerTokenInterceptor
from .batcher import Batcher
from .convert import FrameLimits
from .drain import DrainGate
from .engine import BatchEngine
from .inference import InferenceCore
from .kserve import WIRE_SERVICE, KServeModel, KServeServicer
from .live_weights import LiveWeights
from .metrics import Metrics, MetricsInterceptor, start_metrics_http
from .pool import StatePool
from .push import AdminCredentials
from .sequences import SequenceRegistry
from .servicer import EncoderServicer
from .settings import ServerSettings
from .streams import StreamRegistry
from .tls import server_credentials
from .versions import VersionHistory
from .video import VideoLimits

__all__ = ["RunningServer", "create_server", "serve"]

log = logging.getLogger("vidlstm.service")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Encoder"].full_name


@dataclass(frozen=True)
class FrontEnd:
    """One protocol on the port: its handlers, the name health reports it under, and the name
    reflection lists (KServe's messages live in a private package, so the two differ)."""

    register: Callable[[grpc.aio.Server], None]
    health_name: str
    reflection_name: str


class FrontEndFactory(Protocol):
    def __call__(self, core: InferenceCore, settings: ServerSettings, drain: DrainGate) -> FrontEnd: ...


def v1_frontend(core: InferenceCore, settings: ServerSettings, drain: DrainGate) -> FrontEnd:
    servicer = EncoderServicer(
        core,
        limits=_frame_limits(settings),
        default_deadline=settings.default_deadline_s,
        admins=_admins(settings),
        max_weights_bytes=settings.max_weights_bytes,
    )
    return FrontEnd(
        lambda server: pb_grpc.add_EncoderServicer_to_server(servicer, server), SERVICE_NAME, SERVICE_NAME
    )


def kserve_frontend(core: InferenceCore, settings: ServerSettings, drain: DrainGate) -> FrontEnd:
    model = KServeModel(
        settings.kserve_model_name,
        settings.kserve_input_name,
        settings.kserve_output_name,
        core.input_spec,
        core.model.model.out_size,
        max_batch_size=min(settings.max_frames_per_call, settings.state_capacity),
        sequence_idle_timeout=settings.sequence_idle_timeout_s,
    )
    servicer = KServeServicer(
        core,
        model,
        limits=_frame_limits(settings),
        default_deadline=settings.default_deadline_s,
        max_in_flight_per_stream=settings.max_envs_per_stream,
        drain=drain,
    )
    private_name = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
    return FrontEnd(servicer.register, WIRE_SERVICE, private_name)


FRONTENDS: dict[str, FrontEndFactory] = {"v1": v1_frontend, "kserve": kserve_frontend}


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    core: InferenceCore
    batcher: Batcher
    health: HealthServicer
    metrics: Metrics
    drain: DrainGate

    async def stop(self, grace: float | None) -> None:
        """Drains, then closes the port: health says NOT_SERVING and new calls get UNAVAILABLE while
        the calls in flight and open streams go on, for up to `grace` seconds (None: no wait)."""
        await self.health.enter_graceful_shutdown()
        self.drain.close()
        await self.drain.wait_idle(grace or 0)
        await self.server.stop(0)
        self.core.weights.close()
        await self.batcher.stop()
        self.core.close()


async def create_server(settings: ServerSettings, model: InferenceModel) -> RunningServer:
    """Builds, binds and starts a server for `model` with the protocols in `settings.frontends` over
    one inference core (one batcher, one state pool); port 0 picks a free port."""
    pool = StatePool(model.state_specs, settings.state_capacity, model.device)
    metrics = Metrics()
    batcher = Batcher(
        BatchEngine(model, pool, cnn_batch_size=settings.max_batch_size),
        max_batch_size=settings.max_batch_size,
        max_queue_delay=settings.max_queue_delay_ms / 1000,
        max_queued_jobs=settings.max_queued_jobs,
        metrics=metrics,
    )
    streams = StreamRegistry(
        pool,
        max_streams=settings.max_streams,
        max_streams_per_client=settings.max_streams_per_client,
        max_envs_per_stream=settings.max_envs_per_stream,
    )
    sequences = SequenceRegistry(pool, max_sequences_per_client=settings.max_sequences_per_client)
    metrics.live_streams.set_function(lambda: streams.live_streams)
    metrics.live_envs.set_function(lambda: pool.live)
    metrics.live_sequences.set_function(lambda: sequences.live_sequences)
    metrics.weights_version.set_function(lambda: model.version.number)
    history = VersionHistory(model.lineage, model.version, window=settings.state_version_window)
    weights = LiveWeights(model, batcher, pool, history, metrics, reset_state=settings.reset_state_on_swap)
    core = InferenceCore(
        model,
        batcher,
        streams,
        sequences,
        weights,
        video=VideoLimits(
            settings.video_root,
            settings.max_video_bytes,
            settings.video_chunk_frames,
            settings.decoder,
            settings.decoder_threads,
            settings.stream_idle_timeout_s,
            max_message_bytes=settings.max_message_bytes,
            decoders=settings.video_decoders,
        ),
        stream_idle_timeout=settings.stream_idle_timeout_s,
        sequence_idle_timeout=settings.sequence_idle_timeout_s,
        max_message_bytes=settings.max_message_bytes,
    )
    credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    # Metrics outermost, so calls the token check or the drain gate refuses are counted too; the
    # gate innermost, so it wraps the servicers' own handlers.
    drain = DrainGate()
    frontends = [FRONTENDS[name](core, settings, drain) for name in dict.fromkeys(settings.frontends)]
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics)]
    if settings.auth_tokens:
        interceptors.append(BearerTokenInterceptor(settings.auth_tokens))
    interceptors.append(drain)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
            *_keepalive_enforcement(settings),
        ],
    )
    for frontend in frontends:
        frontend.register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        (*(f.reflection_name for f in frontends), health_name, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}")
    batcher.start()
    core.start()
    if settings.watch_weights is not None:
        weights.start_watching(
            settings.watch_weights, skip_first=_same_file(settings.watch_weights, settings.model)
        )
    await server.start()
    for service in ("", *(f.health_name for f in frontends)):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, core, batcher, health, metrics, drain)


def _admins(settings: ServerSettings) -> AdminCredentials:
    return AdminCredentials(settings.admin_tokens, settings.admin_client_names, settings.auth_tokens)


def _same_file(path: Path, other: Path | None) -> bool:
    try:
        return other is not None and path.samefile(other)
    except OSError:
        return False


def _frame_limits(settings: ServerSettings) -> FrameLimits:
    return FrameLimits(settings.max_frames_per_call, settings.max_frame_side, settings.max_image_pixels)


def _keepalive_enforcement(settings: ServerSettings) -> list[tuple[str, int]]:
    """How often clients may ping; pinging faster gets the connection closed (GOAWAY too_many_pings)."""
    return [
        # The C name is GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS; the string has no "recv".
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            round(settings.keepalive_min_ping_interval_s * 1000),
        ),
        ("grpc.keepalive_permit_without_calls", int(settings.keepalive_permit_without_calls)),
    ]


async def serve(settings: ServerSettings) -> None:
    """Runs until SIGINT/SIGTERM, then drains for `grace_period_s`.

    The model is loaded and warmed up before the port opens, so health says SERVING only when a
    request would be answered at full speed.
    """
    log.info("settings: %r", settings)
    model = load_inference_model(
        model=settings.model,
        spec=settings.spec,
        device=settings.device,
        threads=settings.threads,
        precision=settings.precision,
        compile=settings.compile,
        cuda_graphs=settings.cuda_graphs,
        live_weights=_admins(settings).enabled or settings.watch_weights is not None,
    )
    model.warm_up(settings.max_batch_size)
    running = await create_server(settings, model)
    try:
        stop_metrics = _serve_metrics(running.metrics, settings)
    except OSError as error:
        await running.stop(0)
        raise OSError(
            f"could not serve metrics on {settings.host}:{settings.metrics_port}: {error}"
        ) from None
    log.info(
        "serving model %r (%s, embedding %d, weights %s, version 1) on %s (%s%s), listening on %s:%d",
        model.model.spec.name,
        model.model.spec.encoder.name,
        model.model.out_size,
        model.weights_hash[:12],
        model.device,
        model.precision,
        ", compiled" if model.compile else "",
        settings.host,
        running.port,
    )
    log.info(
        "transport: %s; auth: %s; weights push: %s; metrics: %s",
        "mutual TLS" if settings.tls_client_ca else "TLS" if settings.tls_cert else "plaintext",
        f"{len(settings.auth_tokens)} bearer token(s)" if settings.auth_tokens else "none",
        "on" if _admins(settings).enabled else "off",
        f"http://{settings.host}:{settings.metrics_port}/metrics"
        if settings.metrics_port is not None
        else "off",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining calls for up to %.1f s", settings.grace_period_s)
    await running.stop(settings.grace_period_s)
    stop_metrics()
    log.info("stopped")


def _serve_metrics(metrics: Metrics, settings: ServerSettings) -> Callable[[], None]:
    """Starts the /metrics endpoint unless it is switched off; returns what stops it."""
    if settings.metrics_port is None:
        return lambda: None
    return start_metrics_http(metrics, settings.host, settings.metrics_port)
