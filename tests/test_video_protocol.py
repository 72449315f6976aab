"""EncodeVideo's message protocol: options and a path only in the first message, and a path request is
one message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import ServerThread
from videos import write_video

from vidlstm.models import InferenceModel
from vidlstm.service import ServerSettings
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "clip.mp4", frames=6, width=64, height=48)
    return root


@pytest.fixture(scope="module")
def video_server(model: InferenceModel, video_root: Path) -> Iterator[ServerThread]:
    running = ServerThread(ServerSettings(port=0, video_root=video_root), model)
    yield running
    running.stop()


def _call(address: str, requests: list[pb.VideoRequest]) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as raised:
        list(pb_grpc.EncoderStub(channel).EncodeVideo(iter(requests), timeout=30))
    return raised.value


def test_a_path_request_is_one_message(video_server: ServerThread) -> None:
    error = _call(video_server.address, [pb.VideoRequest(path="clip.mp4"), pb.VideoRequest(data=b"more")])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a path request is one message" in str(error.details())


def test_options_only_in_the_first_message(video_server: ServerThread, video_root: Path) -> None:
    data = (video_root / "clip.mp4").read_bytes()
    late = pb.VideoRequest(data=data[100:], options=pb.VideoOptions(fps=float("nan")))
    error = _call(video_server.address, [pb.VideoRequest(data=data[:100]), late])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options are only read from the first message" in str(error.details())
