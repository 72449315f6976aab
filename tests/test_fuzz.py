"""Property-based fuzzing: random and malformed messages to every RPC get a status code (never
UNKNOWN or INTERNAL for a client mistake), the server stays up, and a well-formed request
afterwards still gets correct embeddings."""

from __future__ import annotations

import os
import time

import grpc
import numpy as np
import pytest
from conftest import ServerThread, random_frames, reference_embeddings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidlstm.clients import EncoderClient
from vidlstm.models import InferenceModel
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc

SERVER_FAULTS = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
FUZZ = settings(
    max_examples=int(os.environ.get("VIDLSTM_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

dims = st.integers(-2, 300)
shapes = st.lists(dims, min_size=0, max_size=6)
blobs = st.binary(max_size=4096)


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    return pb.Tensor(shape=draw(shapes), dtype=draw(st.integers(0, 6)), data=draw(blobs))


@st.composite
def frames(draw: st.DrawFn) -> pb.Frames:
    if draw(st.booleans()):
        shape = draw(st.one_of(shapes, st.tuples(st.integers(0, 3), dims, dims, st.integers(0, 4)).map(list)))
        count = max(int(np.prod([max(d, 0) for d in shape])) if shape else 0, 0)
        size = draw(st.sampled_from([count, max(count - 1, 0), count + 3, 0])) if count < 200_000 else 7
        raw = pb.RawFrames(shape=shape, pixel_format=draw(st.integers(0, 6)), data=bytes(size))
        return pb.Frames(raw=raw)
    images = draw(
        st.lists(
            st.one_of(blobs, st.just(b"\xff\xd8\xff\xe0" + bytes(30)), st.just(b"\x89PNG\r\n\x1a\n")),
            max_size=3,
        )
    )
    return pb.Frames(encoded=pb.EncodedFrames(images=images))


@st.composite
def states(draw: st.DrawFn) -> pb.State:
    names = draw(st.lists(st.sampled_from(["h", "c", "frames", "x"]), max_size=3, unique=True))
    return pb.State(weights_hash=draw(st.text(max_size=70)), tensors={n: draw(tensors()) for n in names})


@st.composite
def encode_requests(draw: st.DrawFn) -> pb.EncodeRequest:
    sequences = []
    for _ in range(draw(st.integers(0, 3))):
        sequence = pb.Sequence(frames=draw(frames()), episode_start=draw(st.lists(st.booleans(), max_size=5)))
        if draw(st.booleans()):
            sequence.initial_state.CopyFrom(draw(states()))
        sequences.append(sequence)
    return pb.EncodeRequest(
        sequences=sequences, embedding_dtype=draw(st.integers(0, 5)), return_state=draw(st.booleans())
    )


@st.composite
def stream_requests(draw: st.DrawFn) -> pb.StreamRequest:
    request = pb.StreamRequest(
        env_ids=draw(st.lists(st.integers(0, 2**32 - 1), max_size=4)),
        episode_start=draw(st.lists(st.booleans(), max_size=4)),
        return_state_env_ids=draw(st.lists(st.integers(0, 5), max_size=3)),
        release_env_ids=draw(st.lists(st.integers(0, 5), max_size=3)),
        embedding_dtype=draw(st.integers(0, 5)),
    )
    if draw(st.booleans()):
        request.frames.CopyFrom(draw(frames()))
    for env in draw(st.lists(st.integers(0, 5), max_size=2, unique=True)):
        request.set_states[env].CopyFrom(draw(states()))
    return request


@pytest.fixture(scope="module")
def stub(server: ServerThread):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.EncoderStub(channel)


def _assert_client_error(error: grpc.RpcError) -> None:
    assert error.code() not in SERVER_FAULTS, f"{error.code()}: {error.details()}"


@FUZZ
@given(request=encode_requests())
def test_encode_never_fails_on_the_server(stub: pb_grpc.EncoderStub, request: pb.EncodeRequest) -> None:
    try:
        stub.Encode(request, timeout=30)
    except grpc.RpcError as error:
        _assert_client_error(error)


@FUZZ
@given(requests=st.lists(stream_requests(), min_size=1, max_size=5), cancel_after=st.integers(0, 5))
def test_streams_never_fail_on_the_server(
    stub: pb_grpc.EncoderStub, requests: list[pb.StreamRequest], cancel_after: int
) -> None:
    call = stub.EncodeStream(iter(requests), timeout=30)
    try:
        for index, response in enumerate(call):
            if response.HasField("error"):
                assert response.error.code not in (c.value[0] for c in SERVER_FAULTS), response.error.message
            if index + 1 >= cancel_after:
                call.cancel()  # an abrupt client
                break
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            _assert_client_error(error)


numbers = st.floats(allow_nan=True, allow_infinity=True, width=32)
video_options = st.builds(
    pb.VideoOptions,
    every=st.integers(0, 5),
    fps=numbers,
    start_s=numbers,
    end_s=numbers,
    max_frames=st.integers(0, 5),
    embedding_dtype=st.integers(0, 4),
    chunk_frames=st.integers(0, 1 << 20),
)
# A path or uploaded bytes, as a client sends them; both at once only now and then (a refusal).
first_video_requests = st.one_of(
    st.builds(pb.VideoRequest, options=video_options, path=st.text(min_size=1, max_size=30)),
    st.builds(pb.VideoRequest, options=video_options, data=blobs.filter(bool)),
    st.builds(pb.VideoRequest, options=video_options, path=st.text(max_size=30), data=blobs),
)


@FUZZ
@given(first=first_video_requests, more=st.lists(blobs, max_size=2))
def test_video_never_fails_on_the_server(
    stub: pb_grpc.EncoderStub, first: pb.VideoRequest, more: list[bytes]
) -> None:
    requests = [first, *(pb.VideoRequest(data=d) for d in more)]
    try:
        list(stub.EncodeVideo(iter(requests), timeout=30))
    except grpc.RpcError as error:
        _assert_client_error(error)


def test_server_still_correct_after_fuzzing(server: ServerThread, model: InferenceModel) -> None:
    frames_ = random_frames(np.random.default_rng(9), 6)
    with EncoderClient(server.address) as client:
        result = client.encode(frames_, pixel_format="GRAY")
    np.testing.assert_allclose(result.embeddings, reference_embeddings(model, frames_), atol=1e-5, rtol=0)
    deadline = time.monotonic() + 10
    while server.live_envs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.live_envs == 0
    assert server.live_streams == 0
