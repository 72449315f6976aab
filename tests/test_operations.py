"""The `vidlstm serve` process as a deployment sees it: Prometheus metrics over HTTP, JSON logs,
health, and SIGTERM draining accepted calls and open streams before a clean exit."""

from __future__ import annotations

import json
import queue
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import TOKEN, ServeProcess, ServerThread, random_frames, reference_embeddings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vidlstm.clients import EncoderClient, InvalidInputError, ServerUnavailableError, UnauthenticatedError
from vidlstm.models import InferenceModel
from vidlstm.service import ServerSettings
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.wire import raw_frames

DRAINING = "server is shutting down; retry on another replica"


def health_status(address: str) -> int:
    """One health Check over a new connection, as a load balancer's probe makes it."""
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service="vidlstm.v1.Encoder")
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def wait_until_draining(address: str, timeout: float = 30) -> None:
    """Waits until health says NOT_SERVING (SERVING until the server handles SIGTERM); a Check that
    fails instead (the port closed at once) raises its RpcError."""
    deadline = time.monotonic() + timeout
    while health_status(address) == health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, f"health still SERVING {timeout} s after SIGTERM"
        time.sleep(0.05)


@pytest.fixture
def serve_process() -> Iterator[ServeProcess]:
    running = ServeProcess("--grace-period-s", "30")
    yield running
    running.close()


def test_metrics_count_calls_by_code_batches_and_live_streams(serve_process: ServeProcess, rng) -> None:
    encode = {"grpc_service": "vidlstm.v1.Encoder", "grpc_method": "Encode"}
    with serve_process.client() as client:
        client.encode(random_frames(rng, 5), pixel_format="GRAY")
        with pytest.raises(InvalidInputError):
            client.encode([b"not an image"], pixel_format="GRAY")
        with client.session(num_envs=3, pixel_format="GRAY") as session:
            session.step(random_frames(rng, 3))
            assert serve_process.metric("vidlstm_live_streams") == 1
            assert serve_process.metric("vidlstm_live_envs") == 3
        with (
            EncoderClient(serve_process.address, timeout=10) as anonymous,
            pytest.raises(UnauthenticatedError),
        ):
            anonymous.info()

    assert serve_process.metric("grpc_server_handled_total", **encode, grpc_code="OK") == 1
    assert serve_process.metric("grpc_server_handled_total", **encode, grpc_code="INVALID_ARGUMENT") == 1
    assert serve_process.metric("grpc_server_handling_seconds_count", **encode, grpc_type="unary") == 2
    assert (
        serve_process.metric(
            "grpc_server_handled_total", grpc_method="GetModelInfo", grpc_code="UNAUTHENTICATED"
        )
        == 1
    )
    assert serve_process.metric("vidlstm_frames_total") == 5 + 3
    assert serve_process.metric("vidlstm_batch_frames_count") >= 2
    assert serve_process.metric("vidlstm_batch_frames_sum") == 5 + 3
    assert serve_process.metric("vidlstm_queue_delay_seconds_count") >= 2
    assert serve_process.metric("vidlstm_live_streams") == 0
    assert serve_process.metric("vidlstm_live_envs") == 0


def test_sigterm_drains_accepted_calls_and_open_streams(
    serve_process: ServeProcess, model: InferenceModel, rng
) -> None:
    """After SIGTERM, while calls are in flight and a stream is open: health answers NOT_SERVING (the
    port stays open for probes), a new call gets UNAVAILABLE at once, the open stream and the calls
    get their right answers; then the process exits 0; every log line is JSON."""
    stream_frames = random_frames(rng, 8)
    call_frames = [random_frames(rng, 128) for _ in range(6)]
    with serve_process.client() as client, ThreadPoolExecutor(6) as pool:
        session = client.session(pixel_format="GRAY")
        streamed = [session.step(frame) for frame in stream_frames[:3]]
        calls = [pool.submit(client.encode, frames, pixel_format="GRAY") for frames in call_frames]
        deadline = time.monotonic() + 30
        while serve_process.metric("grpc_server_started_total", grpc_method="Encode") < len(calls):
            assert time.monotonic() < deadline, "the calls never reached the server"
            time.sleep(0.01)

        serve_process.process.send_signal(signal.SIGTERM)
        wait_until_draining(serve_process.address)
        with EncoderClient(serve_process.address, token=TOKEN, retry=None) as late:
            with pytest.raises(ServerUnavailableError, match=DRAINING):
                late.encode(stream_frames[:1], pixel_format="GRAY")
            with late.session(pixel_format="GRAY") as new_stream, pytest.raises(ServerUnavailableError):
                new_stream.step(stream_frames[0])
        refused = {"grpc_method": "Encode", "grpc_code": "UNAVAILABLE"}
        assert serve_process.metric("grpc_server_handled_total", **refused) == 1
        streamed += [session.step(frame) for frame in stream_frames[3:]]
        assert health_status(serve_process.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        session.close()
        results = [call.result(timeout=60) for call in calls]

    assert serve_process.stop() == 0
    np.testing.assert_allclose(np.stack(streamed), reference_embeddings(model, stream_frames), atol=1e-5)
    for frames, result in zip(call_frames, results, strict=True):
        np.testing.assert_allclose(result.embeddings, reference_embeddings(model, frames), atol=1e-5)
    logs = [json.loads(line) for line in serve_process.lines]
    messages = [entry["message"] for entry in logs]
    assert any(m.startswith("settings: ServerSettings(") for m in messages)
    assert messages[-1] == "stopped"
    assert TOKEN not in "".join(serve_process.lines)


def test_unary_calls_spread_over_replicas_a_stream_stays_on_one(model: InferenceModel, rng) -> None:
    """What a client sees through a Kubernetes headless Service: one name, several servers."""
    replicas = [ServerThread(ServerSettings(port=0), model) for _ in range(2)]
    target = "ipv4:" + ",".join(replica.address for replica in replicas)
    try:
        with EncoderClient(target, timeout=30, lb_policy="round_robin") as client:
            for _ in range(8):
                client.encode(random_frames(rng, 1), pixel_format="GRAY")
            with client.session(pixel_format="GRAY") as session:
                for frame in random_frames(rng, 4):
                    session.step(frame)
        handled = [_local_count(r, "Encode") for r in replicas]
        streams = [_local_count(r, "EncodeStream") for r in replicas]
    finally:
        for replica in replicas:
            replica.stop()
    assert sum(handled) == 8
    assert min(handled) >= 2, f"unary calls were not spread: {handled}"
    assert sorted(streams) == [0, 1]


def _local_count(replica: ServerThread, method: str) -> float:
    labels = {"grpc_type": "unary" if method == "Encode" else "bidi_stream"}
    labels |= {"grpc_service": "vidlstm.v1.Encoder", "grpc_method": method}
    return replica.running.metrics.registry.get_sample_value("grpc_server_started_total", labels) or 0.0


def test_a_stream_still_open_when_the_grace_period_ends_is_cancelled(rng) -> None:
    """The drain waits at most --grace-period-s: then the open stream ends and the process exits 0."""
    running = ServeProcess("--grace-period-s", "1")
    try:
        with running.client() as client, client.session(pixel_format="GRAY") as session:
            session.step(random_frames(rng, 1)[0])
            signalled = time.monotonic()
            running.process.send_signal(signal.SIGTERM)
            assert running.process.wait(30) == 0
            exited_after = time.monotonic() - signalled
            with pytest.raises(ServerUnavailableError):
                session.step(random_frames(rng, 1)[0])
    finally:
        running.close()
    assert 1.0 <= exited_after < 15, exited_after


def test_a_stream_cancelled_with_a_request_in_flight_is_counted_as_cancelled(model: InferenceModel) -> None:
    """grpc_server_handled_total counts a stream cancelled without closing while a request of it is
    in flight (a killed actor) as CANCELLED, not OK. (A stream cancelled while idle ends on the server
    like a closed one: gRPC's Python server tells the two apart too late to count it.)"""
    running = ServerThread(ServerSettings(port=0, max_envs_per_stream=4096), model)
    labels = {"grpc_method": "EncodeStream", "grpc_service": "vidlstm.v1.Encoder", "grpc_type": "bidi_stream"}

    def handled(code: str) -> float:
        sample = running.running.metrics.registry.get_sample_value(
            "grpc_server_handled_total", {**labels, "grpc_code": code}
        )
        return sample or 0.0

    requests: queue.SimpleQueue[pb.StreamRequest | None] = queue.SimpleQueue()
    try:
        with grpc.insecure_channel(running.address) as channel:
            call = pb_grpc.EncoderStub(channel).EncodeStream(iter(requests.get, None), timeout=60)
            requests.put(
                pb.StreamRequest(frames=raw_frames(np.zeros((1, 84, 84, 1), np.uint8), "GRAY"), env_ids=[0])
            )
            next(call)
            # About a second of model time: cancelled as soon as the server has bound its envs.
            many = raw_frames(np.zeros((4000, 84, 84, 1), np.uint8), "GRAY")
            requests.put(pb.StreamRequest(frames=many, env_ids=list(range(1, 4001))))
            deadline = time.monotonic() + 10
            while running.live_envs < 4001 and time.monotonic() < deadline:
                time.sleep(0.005)
            call.cancel()
            deadline = time.monotonic() + 10
            while handled("CANCELLED") + handled("OK") == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        assert (handled("CANCELLED"), handled("OK")) == (1.0, 0.0)
    finally:
        running.stop()
