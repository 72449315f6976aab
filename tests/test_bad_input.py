"""Every malformed request gets the right status and a message that says what to fix; the server
keeps serving others afterwards."""

from __future__ import annotations

import io
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from conftest import ServerThread, random_frames, reference_embeddings
from PIL import Image

from vidlstm.clients import EncoderClient
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.wire import tensor_to_proto


def _raw(shape: list[int], data: bytes, pixel_format: int = pb.GRAY) -> pb.EncodeRequest:
    frames = pb.Frames(raw=pb.RawFrames(shape=shape, pixel_format=pixel_format, data=data))
    return pb.EncodeRequest(sequences=[pb.Sequence(frames=frames)])


def _jpeg(size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _encoded(images: list[bytes]) -> pb.EncodeRequest:
    return pb.EncodeRequest(
        sequences=[pb.Sequence(frames=pb.Frames(encoded=pb.EncodedFrames(images=images)))]
    )


def _state(**overrides: object) -> pb.EncodeRequest:
    request = _raw([1, 84, 84, 1], bytes(84 * 84))
    tensors = {
        "h": tensor_to_proto(np.zeros((1, 256), np.float32)),
        "c": tensor_to_proto(np.zeros((1, 256), np.float32)),
    }
    tensors.update(overrides.pop("tensors", {}))  # type: ignore[arg-type]
    request.sequences[0].initial_state.CopyFrom(pb.State(tensors=tensors, **overrides))  # type: ignore[arg-type]
    return request


# case -> (request, or a function of the server's weights hash giving it; what the message must say)
BAD_REQUESTS: dict[str, tuple[pb.EncodeRequest | Callable[[str], pb.EncodeRequest], str]] = {
    "byte count not matching shape": (_raw([2, 84, 84, 1], bytes(100)), "has 100 bytes, shape"),
    "unknown pixel format": (_raw([1, 8, 8, 1], bytes(64), pixel_format=9), "unknown pixel_format 9"),
    "channels not matching format": (_raw([1, 8, 8, 1], bytes(64), pb.RGB), "RGB frames have 3 channel"),
    "zero frames": (_raw([0, 84, 84, 1], b""), "zero frames"),
    "absurd size": (_raw([1, 100000, 100000, 1], b""), "outside 1..4096"),
    "too many frames": (_raw([100000, 1, 1, 1], b""), "100000 frames in one message; the limit is 512"),
    "rank wrong": (_raw([84, 84], bytes(84 * 84)), "must be [N, H, W, C]"),
    "no frames at all": (pb.EncodeRequest(sequences=[pb.Sequence()]), "set Frames.raw or Frames.encoded"),
    "no sequences": (pb.EncodeRequest(), "no sequences"),
    "corrupt jpeg": (
        _encoded([b"\xff\xd8\xff\xe0garbage"]),
        "EncodedFrames.images[0]: truncated or corrupt image (11 bytes)",
    ),
    "truncated jpeg": (
        _encoded([_jpeg(), _jpeg()[:200]]),
        "EncodedFrames.images[1]: truncated or corrupt image (200 bytes)",
    ),
    "not an image": (
        _encoded([b"GIF89a" + bytes(40)]),
        "EncodedFrames.images[0]: corrupt or unreadable image (46 bytes starting b'GIF89a\\x00\\x00'): "
        "not a JPEG or PNG file, or one cut short inside its header",
    ),
    "episode_start length": (
        pb.EncodeRequest(
            sequences=[
                pb.Sequence(
                    frames=_raw([2, 84, 84, 1], bytes(2 * 84 * 84)).sequences[0].frames, episode_start=[True]
                )
            ]
        ),
        "episode_start has 1 values for 2 frames",
    ),
    "state of wrong shape": (
        lambda weights_hash: _state(
            weights_hash=weights_hash, tensors={"h": tensor_to_proto(np.zeros((2, 256), np.float32))}
        ),
        "state tensor 'h' must be float32 [1, 256], got float32 [2, 256]",
    ),
    "bad embedding dtype": (
        pb.EncodeRequest(sequences=_raw([1, 84, 84, 1], bytes(84 * 84)).sequences, embedding_dtype=pb.UINT8),
        "FLOAT32 or FLOAT16",
    ),
}


@pytest.fixture(scope="module")
def stub(server: ServerThread):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.EncoderStub(channel)


@pytest.fixture(scope="module")
def weights_hash(stub) -> str:
    """The served model's hash, so that state cases are refused for their shape, not as foreign."""
    return str(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).weights_hash)


def _request(case: str, weights_hash: str) -> pb.EncodeRequest:
    request = BAD_REQUESTS[case][0]
    return request(weights_hash) if callable(request) else request


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_invalid_argument(stub, weights_hash: str, case: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Encode(_request(case, weights_hash), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert BAD_REQUESTS[case][1] in raised.value.details()


def test_state_from_another_model_is_refused(server: ServerThread, stub) -> None:
    request = _state(weights_hash="0" * 64)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Encode(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "state comes from model 000000000000" in raised.value.details()


def test_decompression_bomb_is_refused_before_decoding(stub) -> None:
    buffer = io.BytesIO()
    Image.new("L", (10000, 10000)).save(buffer, format="PNG")  # ~100 KB file, 100 Mpixel image
    with pytest.raises(grpc.RpcError) as raised:
        stub.Encode(_encoded([buffer.getvalue()]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10000x10000 pixels is over the limit" in raised.value.details()


def test_oversize_message_is_resource_exhausted(server: ServerThread) -> None:
    with grpc.insecure_channel(
        server.address, options=[("grpc.max_send_message_length", 1 << 28)]
    ) as channel:
        stub = pb_grpc.EncoderStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Encode(_raw([1, 4096, 4096, 3], bytes(70 << 20)), timeout=10)  # over 64 MiB
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_server_keeps_serving_after_bad_requests(
    server: ServerThread, stub, weights_hash: str, model, rng
) -> None:
    for case in BAD_REQUESTS:
        with pytest.raises(grpc.RpcError):
            stub.Encode(_request(case, weights_hash), timeout=10)
    frames = random_frames(rng, 4)
    with EncoderClient(server.address) as client:
        result = client.encode(frames, pixel_format="GRAY")
    np.testing.assert_allclose(result.embeddings, reference_embeddings(model, frames), atol=1e-5, rtol=0)
    assert server.live_envs == 0
