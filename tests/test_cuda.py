"""The CUDA path against the CPU: every RPC served from a GPU model gives the CPU model's embeddings
and state, with state carried across steps and resets (skipped without a CUDA device).

Tolerances, relative to the largest |value| of the CPU fp32 result: fp32 1% (cuDNN convolutions
run in TF32 by default, PyTorch's setting), bf16 5% and fp16 1% as on CPU (tests/test_precision.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ServerThread, serving
from test_precision import assert_near
from videos import write_video

from vidlstm.clients import AsyncEncoderClient, EncoderClient, RecurrentState
from vidlstm.models import (
    InferenceModel,
    ModelSpec,
    PixelFormat,
    build_model,
    checkpoint_bytes,
    default_spec,
    prepare_frames,
)
from vidlstm.models.video_pipeline import encode_video
from vidlstm.service import ServerSettings
from vidlstm.service.transfer import Transfers

# VIDLSTM_TEST_DEVICE=cpu runs these against the CPU: a dry run of the tests themselves.
DEVICE = torch.device(os.environ.get("VIDLSTM_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TOLERANCE = {"fp32": 0.01, "bf16": 0.05, "fp16": 0.01}
CPU = torch.device("cpu")
STACKED = replace(default_spec(), name="stacked", input=replace(default_spec().input, frame_stack=4))


def cpu_model(spec: ModelSpec) -> InferenceModel:
    return InferenceModel(build_model(spec), CPU)


@pytest.fixture(scope="module", params=["fp32", "bf16", "fp16"])
def gpu_server(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    model = InferenceModel(build_model(default_spec()), DEVICE, request.param)
    model.warm_up(256)
    running = ServerThread(ServerSettings(port=0), model)
    yield running
    running.stop()


def precision_of(server: ServerThread) -> str:
    return server.running.core.model.precision


def gray(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, (*shape, 84, 84, 1), dtype=np.uint8)


@pytest.mark.parametrize("spec", [default_spec(), STACKED], ids=["default", "frame-stack"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_in_process_gpu_matches_cpu(spec: ModelSpec, precision: str, rng: np.random.Generator) -> None:
    frames = rng.integers(0, 256, (9, 5, 1, 84, 84), dtype=np.uint8)
    starts = rng.random((9, 5)) < 0.25
    want, want_state = cpu_model(spec).encode(frames, episode_start=starts)
    got, got_state = InferenceModel(build_model(spec), DEVICE, precision).encode(frames, episode_start=starts)
    assert_near(got, want, TOLERANCE[precision])
    for name, tensor in want_state.items():
        assert got_state[name].device.type == DEVICE.type
        assert_near(got_state[name].cpu().float().numpy(), tensor.float().numpy(), TOLERANCE[precision])


def test_encode_rpc_matches_cpu(gpu_server: ServerThread, rng: np.random.Generator) -> None:
    """Two sequences in one call, one from a given state, with resets, final state back."""
    reference = cpu_model(default_spec())
    frames, starts = gray(rng, 7), [False, False, True, False, False, True, False]
    prepared = prepare_frames(frames, PixelFormat.GRAY, reference.input_spec)
    _, cpu_state = reference.encode(prepared[:3, None])
    tensors = {name: tensor[:, 0].numpy() for name, tensor in cpu_state.items()}
    initial = RecurrentState(reference.weights_hash, tensors)
    want, want_state = reference.encode(prepared[:, None], cpu_state, np.array(starts)[:, None])
    tolerance = TOLERANCE[precision_of(gpu_server)]
    with EncoderClient(gpu_server.address, timeout=60) as client:
        got = client.encode(frames, episode_start=starts, state=initial, pixel_format="GRAY")
    assert_near(got.embeddings, want[:, 0], tolerance)
    assert got.state is not None
    for name, tensor in want_state.items():
        assert_near(got.state.tensors[name], tensor[:, 0].numpy(), tolerance)


def test_vector_stream_carries_state_across_steps_and_resets(
    gpu_server: ServerThread, rng: np.random.Generator
) -> None:
    steps, envs = 12, 6
    frames = gray(rng, steps, envs)
    starts = rng.random((steps, envs)) < 0.2
    reference = cpu_model(default_spec())
    prepared = np.stack([prepare_frames(f, PixelFormat.GRAY, reference.input_spec) for f in frames])
    want, want_state = reference.encode(prepared, episode_start=starts)
    tolerance = TOLERANCE[precision_of(gpu_server)]
    with (
        EncoderClient(gpu_server.address, timeout=60) as client,
        client.session(envs, pixel_format="GRAY") as s,
    ):
        for step in range(steps):
            assert_near(s.step(frames[step], starts[step]), want[step], tolerance)
        state = s.get_state(env_id=4)
    for name, tensor in want_state.items():
        assert_near(state.tensors[name], tensor[:, 4].numpy(), tolerance)


def test_single_env_streams_batched_together_match_cpu(
    gpu_server: ServerThread, rng: np.random.Generator
) -> None:
    """Single-env streams stepped at once, so their steps meet in batches of several sizes."""
    streams, steps = 5, 6
    frames = gray(rng, steps, streams)
    reference = cpu_model(default_spec())
    prepared = np.stack([prepare_frames(f, PixelFormat.GRAY, reference.input_spec) for f in frames])
    want, _ = reference.encode(prepared)

    async def actors() -> np.ndarray:
        async with AsyncEncoderClient(gpu_server.address, timeout=60) as client:
            sessions = [client.session(pixel_format="GRAY") for _ in range(streams)]
            got = [
                await asyncio.gather(*(s.step(frames[step, env]) for env, s in enumerate(sessions)))
                for step in range(steps)
            ]
            await asyncio.gather(*(s.close() for s in sessions))
        return np.array(got)

    assert_near(asyncio.run(actors()), want, TOLERANCE[precision_of(gpu_server)])


def test_encode_video_rpc_matches_cpu(gpu_server: ServerThread, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4", frames=40, width=160, height=120)
    want = np.concatenate([chunk.embeddings for chunk in encode_video(cpu_model(default_spec()), video)])
    with EncoderClient(gpu_server.address, timeout=60) as client:
        parts = list(client.encode_video(video))
    got = np.concatenate([part.embeddings for part in parts[:-1]])
    assert_near(got, want, TOLERANCE[precision_of(gpu_server)])


def test_compiled_gpu_model_matches_cpu_and_never_recompiles(rng: np.random.Generator) -> None:
    model = InferenceModel(build_model(default_spec()), DEVICE, compile=True)
    model.warm_up(64)
    reference = cpu_model(default_spec())
    with torch._dynamo.config.patch(error_on_recompile=True):
        for envs in (1, 3, 17, 32):  # T=2: up to 64 frames, the largest warm bucket
            frames = rng.integers(0, 256, (2, envs, 1, 84, 84), dtype=np.uint8)
            assert_near(model.encode(frames)[0], reference.encode(frames)[0], TOLERANCE["fp32"])


@pytest.mark.skipif(DEVICE.type != "cuda", reason="pinned memory is a CUDA thing")
def test_frames_go_through_pinned_memory_and_come_back_in_one_piece(rng: np.random.Generator) -> None:
    transfers = Transfers(DEVICE)
    parts = [[gray(rng, 1, 2), gray(rng, 1, 3)], [gray(rng, 2, 1)]]
    joined = transfers.frames_in(parts)
    assert transfers._staging.is_pinned()
    for arrays, tensor in zip(parts, joined, strict=True):
        assert tensor.device.type == DEVICE.type
        np.testing.assert_array_equal(tensor.cpu().numpy(), np.concatenate(arrays, axis=1))
    back = transfers.to_host([joined[0], joined[1].float(), joined[0][:, :2]])
    np.testing.assert_array_equal(back[0], np.concatenate(parts[0], axis=1))
    np.testing.assert_array_equal(back[1], parts[1][0].astype(np.float32))
    np.testing.assert_array_equal(back[2], parts[0][0])


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs are a CUDA thing")
@pytest.mark.parametrize("spec", [default_spec(), STACKED], ids=["default", "frame-stack"])
def test_cuda_graphs_replay_the_eager_cnn(spec: ModelSpec, rng: np.random.Generator) -> None:
    """Graphed and eager CNNs give the same features, for partly filled buckets too, and two calls
    of one bucket within a batch keep their own outputs (the engine chunks large batches)."""
    graphed = InferenceModel(build_model(spec), DEVICE, cuda_graphs=True)
    graphed.warm_up(64)
    assert graphed._graphs, "no CUDA graph was captured"
    eager = InferenceModel(build_model(spec), DEVICE)
    eager.warm_up(64)
    channels = spec.input.channels * spec.input.frame_stack
    with torch.inference_mode():
        for count in (1, 5, 32, 64):
            first, second = (
                torch.from_numpy(rng.integers(0, 256, (count, channels, 84, 84), dtype=np.uint8)).to(DEVICE)
                for _ in range(2)
            )
            kept = [graphed.features(first), graphed.features(second)]
            for frames, features in zip((first, second), kept, strict=True):
                torch.testing.assert_close(features, eager.features(frames), rtol=1e-4, atol=1e-4)
    frames = rng.integers(0, 256, (3, 8, spec.input.channels, 84, 84), dtype=np.uint8)
    starts = rng.random((3, 8)) < 0.3
    np.testing.assert_allclose(
        graphed.encode(frames, episode_start=starts)[0],
        eager.encode(frames, episode_start=starts)[0],
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "options",
    [{"cuda_graphs": True}, {"compile": True, "live_weights": True}, {"precision": "bf16"}],
    ids=["cuda-graphs", "compiled", "bf16"],
)
def test_pushed_weights_serve_on_the_gpu(options: dict[str, object], rng: np.random.Generator) -> None:
    """Weights pushed to a GPU server serve through CUDA graphs (they read the weights' memory), a
    compiled CNN and bf16: a stream's steps before and after the push match the CPU model of each
    version, the state carried across the push."""
    served = InferenceModel(build_model(default_spec()), DEVICE, **options)  # type: ignore[arg-type]
    served.warm_up(8)
    learner = build_model(replace(default_spec(), name="learner", seed=41))
    versions = {1: cpu_model(default_spec()), 2: InferenceModel(learner, CPU)}
    frames = gray(rng, 6)
    with (
        serving(served, admin_tokens=("admin",), max_batch_size=8) as server,
        EncoderClient(server.address, timeout=60) as client,
        EncoderClient(server.address, timeout=60, token="admin") as admin,
        client.session(pixel_format="GRAY") as session,
    ):
        got = []
        for index, frame in enumerate(frames):
            if index == 3:
                admin.push_weights(checkpoint_bytes(learner))
            got.append(session.step(frame))
            assert session.weights is not None
            assert session.weights.number == (1 if index < 3 else 2)
    state = None
    want = []
    for index, frame in enumerate(frames):
        embedding, state = versions[1 if index < 3 else 2].encode(frame.transpose(2, 0, 1)[None, None], state)
        want.append(embedding[0, 0])
    precision = str(options.get("precision", "fp32"))
    assert_near(np.stack(got), np.stack(want), TOLERANCE[precision])
