"""`Encode` over real gRPC equals the plain in-process model, for raw and encoded frames."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from conftest import ServerThread, random_frames, reference_embeddings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from vidlstm.clients import EncoderClient, SequenceInput
from vidlstm.models import InferenceModel, PixelFormat
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.wire import raw_frames


@pytest.fixture
def client(server: ServerThread):
    with EncoderClient(server.address) as client:
        yield client


def test_model_info_describes_the_served_model(client: EncoderClient, model: InferenceModel) -> None:
    info = client.info()
    assert info.embedding_size == 256
    assert (info.input_height, info.input_width, info.input_channels) == (84, 84, 1)
    assert [(s.name, list(s.shape)) for s in info.state] == [("h", [1, 256]), ("c", [1, 256])]
    assert info.weights_hash == model.weights_hash
    assert '"nature"' in info.spec_json
    assert (info.precision, info.compiled) == ("fp32", False)


def test_raw_frames_match_in_process(client: EncoderClient, model: InferenceModel, rng) -> None:
    frames = random_frames(rng, 10, 210, 160, 3)
    starts = np.zeros(10, bool)
    starts[[0, 6]] = True
    result = client.encode(frames, episode_start=starts, pixel_format="RGB")
    expected = reference_embeddings(model, frames, PixelFormat.RGB, starts)
    assert result.embeddings.shape == (10, 256)
    assert result.embeddings.dtype == np.float32
    np.testing.assert_allclose(result.embeddings, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_encoded_images_match_in_process_on_the_decoded_pixels(
    client: EncoderClient, model: InferenceModel, rng, image_format: str
) -> None:
    frames = random_frames(rng, 5, 120, 100, 3)
    files = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format=image_format)
        files.append(buffer.getvalue())
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files])
    result = client.encode(files)
    np.testing.assert_allclose(
        result.embeddings, reference_embeddings(model, decoded, PixelFormat.RGB), atol=1e-5, rtol=0
    )


def test_state_carried_across_calls_equals_one_call(client: EncoderClient, rng) -> None:
    frames = random_frames(rng, 12)
    starts = np.zeros(12, bool)
    starts[8] = True
    whole = client.encode(frames, episode_start=starts, pixel_format="GRAY")
    first = client.encode(frames[:5], episode_start=starts[:5], pixel_format="GRAY")
    second = client.encode(frames[5:], episode_start=starts[5:], state=first.state, pixel_format="GRAY")
    joined = np.concatenate([first.embeddings, second.embeddings])
    np.testing.assert_allclose(joined, whole.embeddings, atol=1e-5, rtol=0)
    assert second.state is not None
    assert whole.state is not None
    np.testing.assert_allclose(second.state.tensors["h"], whole.state.tensors["h"], atol=1e-5, rtol=0)


def test_several_sequences_and_float16(client: EncoderClient, model: InferenceModel, rng) -> None:
    a, b = random_frames(rng, 3), random_frames(rng, 7)
    results = client.encode_many(
        [SequenceInput(a), SequenceInput(b)], pixel_format="GRAY", dtype="float16", return_state=False
    )
    assert [r.embeddings.dtype for r in results] == [np.float16, np.float16]
    assert results[0].state is None
    np.testing.assert_allclose(results[1].embeddings, reference_embeddings(model, b), atol=2e-3, rtol=1e-3)


def test_health_says_serving_and_reflection_lists_the_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "vidlstm.v1.Encoder"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(reflection.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in response.list_services_response.service}
        assert {"vidlstm.v1.Encoder", "grpc.health.v1.Health"} <= names


def test_tensors_on_the_wire_are_little_endian_row_major(
    server: ServerThread, model: InferenceModel, rng
) -> None:
    """Read with an explicit '<f4' and the shape, as a client in another language would."""
    frames = random_frames(rng, 3)
    request = pb.EncodeRequest(sequences=[pb.Sequence(frames=raw_frames(frames, "GRAY"))], return_state=True)
    with grpc.insecure_channel(server.address) as channel:
        response = pb_grpc.EncoderStub(channel).Encode(request, timeout=30)
    tensor = response.results[0].embeddings
    assert (list(tensor.shape), tensor.dtype) == ([3, 256], pb.FLOAT32)
    embeddings = np.frombuffer(tensor.data, dtype="<f4").reshape(3, 256)
    np.testing.assert_allclose(embeddings, reference_embeddings(model, frames), atol=1e-5, rtol=0)
    h = response.results[0].final_state.tensors["h"]
    assert np.frombuffer(h.data, dtype="<f4").reshape(list(h.shape)).shape == (1, 256)


def test_env_ids_must_be_unique_in_a_stream_request(server: ServerThread) -> None:
    frames = raw_frames(np.zeros((2, 84, 84, 1), np.uint8), "GRAY")
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EncoderStub(channel)
        (reply,) = stub.EncodeStream(iter([pb.StreamRequest(frames=frames, env_ids=[3, 3])]), timeout=30)
    assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.error.message == "env_ids must be unique within a request, got [3, 3]"
