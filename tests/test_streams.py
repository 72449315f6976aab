"""EncodeStream: per-env state over a stream, batched across all clients, equal to a plain step loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest
from conftest import ServerThread, random_frames

from vidlstm.clients import (
    AsyncEncoderClient,
    DeadlineExceededError,
    EncoderClient,
    InvalidInputError,
    ModelMismatchError,
    ServerBusyError,
)
from vidlstm.models import InferenceModel, PixelFormat, prepare_frames
from vidlstm.service import ServerSettings


def step_loop(model: InferenceModel, frames: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The plain in-process reference for one env: one model call per frame, state carried."""
    prepared = prepare_frames(frames, PixelFormat.GRAY, model.model.spec.input)
    state = None
    out = []
    for t in range(len(frames)):
        embedding, state = model.encode(prepared[t : t + 1, None], state, starts[t : t + 1, None])
        out.append(embedding[0, 0])
    return np.stack(out)


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_32_concurrent_streams_match_a_plain_step_loop(server: ServerThread, model: InferenceModel) -> None:
    """Single-env and vector-env streams, random timing and resets: batching never changes results."""
    rng = np.random.default_rng(7)
    steps = 12
    plans = []
    for index in range(32):
        envs = 1 if index % 2 else int(rng.integers(2, 6))
        frames = random_frames(rng, steps * envs).reshape(steps, envs, 84, 84, 1)
        starts = rng.random((steps, envs)) < 0.15
        starts[0] = True
        plans.append((envs, frames, starts))

    async def actor(client: AsyncEncoderClient, index: int) -> np.ndarray:
        envs, frames, starts = plans[index]
        delays = np.random.default_rng(index).uniform(0, 0.01, steps)
        async with client.session(None if envs == 1 else envs, pixel_format="GRAY") as session:
            out = []
            for t in range(steps):
                await asyncio.sleep(float(delays[t]))
                if envs == 1:
                    out.append((await session.step(frames[t, 0], bool(starts[t, 0])))[None])
                else:
                    out.append(await session.step(frames[t], starts[t]))
            return np.stack(out)  # [T, envs, D]

    async def run_all() -> list[np.ndarray]:
        async with AsyncEncoderClient(server.address) as client:
            return await asyncio.gather(*(actor(client, i) for i in range(32)))

    registry = server.running.metrics.registry  # what /metrics serves

    def batches() -> float:
        return registry.get_sample_value("vidlstm_batch_frames_count") or 0.0

    batches_before = batches()
    results = asyncio.run(run_all())
    for (envs, frames, starts), got in zip(plans, results, strict=True):
        for env in range(envs):
            expected = step_loop(model, frames[:, env], starts[:, env])
            np.testing.assert_allclose(got[:, env], expected, atol=1e-4, rtol=0)
    total_steps = 32 * steps
    assert 0 < batches() - batches_before < total_steps, "nothing was batched"
    assert wait_until(lambda: server.live_envs == 0)
    assert server.live_streams == 0


def test_state_moved_to_a_new_stream_continues_exactly(server: ServerThread, model: InferenceModel) -> None:
    rng = np.random.default_rng(3)
    frames = random_frames(rng, 10)
    starts = np.zeros(10, bool)
    starts[0] = True
    expected = step_loop(model, frames, starts)
    with EncoderClient(server.address) as client:
        with client.session(pixel_format="GRAY") as first:
            head = [first.step(frames[t], starts[t]) for t in range(6)]
            state = first.get_state()
        with client.session(pixel_format="GRAY", initial_states={0: state}) as second:
            tail = [second.step(frames[t], starts[t]) for t in range(6, 10)]
        with client.session(pixel_format="GRAY") as third:  # set_state on an open stream
            third.step(frames[0], True)
            third.set_state(state)
            moved = third.step(frames[6])
    np.testing.assert_allclose(np.stack(head + tail), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(moved, expected[6], atol=1e-4, rtol=0)


def test_vector_session_equals_single_env_sessions(server: ServerThread) -> None:
    rng = np.random.default_rng(5)
    frames = random_frames(rng, 4 * 3).reshape(4, 3, 84, 84, 1)
    with EncoderClient(server.address) as client:
        with client.session(3, pixel_format="GRAY", dtype="float16") as vector:
            together = np.stack([vector.step(frames[t]) for t in range(4)])
        apart = []
        for env in range(3):
            with client.session(pixel_format="GRAY") as single:
                apart.append(np.stack([single.step(frames[t, env]) for t in range(4)]))
    assert together.dtype == np.float16
    np.testing.assert_allclose(together, np.stack(apart, axis=1), atol=2e-3, rtol=1e-3)


def test_bad_frame_is_refused_on_its_message_only(server: ServerThread, model: InferenceModel) -> None:
    rng = np.random.default_rng(11)
    frames = random_frames(rng, 4)
    starts = np.array([True, False, False, False])
    expected = step_loop(model, frames, starts)
    with (
        EncoderClient(server.address) as client,
        client.session(pixel_format="GRAY") as broken,
        client.session(pixel_format="GRAY") as other,
    ):
        got = [broken.step(frames[0], True)]
        other_out = [other.step(frames[0], True)]
        with pytest.raises(InvalidInputError, match="GRAY frames have 1 channel"):
            broken.step(np.zeros((84, 84, 3), np.uint8))  # RGB-shaped frame on a GRAY session
        with pytest.raises(InvalidInputError, match=r"outside 1\.\.4096"):
            broken.step(np.zeros((5000, 2, 1), np.uint8))
        other_out.append(other.step(frames[1]))
        got += [broken.step(frames[t]) for t in range(1, 4)]  # the refused steps changed nothing
        other_out += [other.step(frames[t]) for t in range(2, 4)]
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.stack(other_out), expected, atol=1e-4, rtol=0)


def test_state_from_another_model_is_refused_on_a_stream(server: ServerThread) -> None:
    from vidlstm.clients import RecurrentState

    foreign = RecurrentState(
        "f" * 64, {"h": np.zeros((1, 256), np.float32), "c": np.zeros((1, 256), np.float32)}
    )
    with EncoderClient(server.address) as client, client.session(pixel_format="GRAY") as session:
        session.set_state(foreign)
        with pytest.raises(ModelMismatchError, match="state comes from model ffffffffffff"):
            session.step(np.zeros((84, 84, 1), np.uint8))
        assert session.step(np.zeros((84, 84, 1), np.uint8)).shape == (256,)


def test_client_killed_mid_stream_leaves_no_state(server: ServerThread) -> None:
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from vidlstm.clients import EncoderClient
        client = EncoderClient("{server.address}")
        session = client.session(8, pixel_format="GRAY")
        session.step(np.zeros((8, 84, 84, 1), np.uint8))
        print("stepped", flush=True)
        sys.stdin.read()
    """)
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "stepped"
        assert server.live_envs == 8
        process.kill()
    assert wait_until(lambda: server.live_envs == 0), server.live_envs
    assert server.live_streams == 0


@pytest.fixture
def small_server(model: InferenceModel):
    settings = ServerSettings(port=0, max_streams=2, max_envs_per_stream=4, stream_idle_timeout_s=0.5)
    running = ServerThread(settings, model)
    yield running
    running.stop()


def test_stream_limits_give_resource_exhausted(small_server: ServerThread) -> None:
    frame = np.zeros((84, 84, 1), np.uint8)
    with EncoderClient(small_server.address) as client:
        with client.session(pixel_format="GRAY") as a, client.session(pixel_format="GRAY") as b:
            a.step(frame)
            b.step(frame)
            with (
                client.session(pixel_format="GRAY") as third,
                pytest.raises(ServerBusyError, match="2 streams are open, the limit is 2"),
            ):
                third.step(frame)
        with (
            client.session(5, pixel_format="GRAY") as too_wide,
            pytest.raises(ServerBusyError, match="stream would hold 5 envs, the limit is 4"),
        ):
            too_wide.step(np.zeros((5, 84, 84, 1), np.uint8))


def test_idle_stream_is_closed_and_its_state_dropped(small_server: ServerThread) -> None:
    with EncoderClient(small_server.address) as client, client.session(3, pixel_format="GRAY") as session:
        session.step(np.zeros((3, 84, 84, 1), np.uint8))
        assert small_server.live_envs == 3
        assert wait_until(lambda: small_server.live_envs == 0, timeout=5)
        with pytest.raises(DeadlineExceededError, match=r"idle for more than 0\.5 s") as raised:
            session.step(np.zeros((3, 84, 84, 1), np.uint8))
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_expired_calls_are_dropped_before_the_model(server: ServerThread) -> None:
    """Calls whose deadline passes while queued behind a long job never reach the model."""
    from vidlstm.clients import SequenceInput

    big = [SequenceInput(np.zeros((256, 84, 84, 1), np.uint8)) for _ in range(2)]
    registry = server.running.metrics.registry  # what /metrics serves

    def frames_embedded() -> float:
        return registry.get_sample_value("vidlstm_frames_total") or 0.0

    frames_before = frames_embedded()

    async def run() -> list[object]:
        async with (
            AsyncEncoderClient(server.address, timeout=60) as slow,
            AsyncEncoderClient(server.address, timeout=0.05) as hasty,
        ):
            # Four long calls, 2048 frames: the model is busy for about a second.
            long_job = asyncio.gather(*(slow.encode_many(big, pixel_format="GRAY") for _ in range(4)))
            await asyncio.sleep(0.2)  # the long calls are on the model and queued
            quick = [hasty.encode(np.zeros((1, 84, 84, 1), np.uint8), pixel_format="GRAY") for _ in range(5)]
            outcomes = await asyncio.gather(*quick, return_exceptions=True)
            await long_job
            return outcomes

    outcomes = asyncio.run(run())
    assert all(isinstance(o, DeadlineExceededError) for o in outcomes), outcomes
    # Expired while queued (dropped by the batcher) or before they were queued: none reached the model.
    assert frames_embedded() - frames_before == 2048
    assert wait_until(lambda: server.live_envs == 0)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_state_set_before_a_refused_step_is_installed_by_the_next(
    server: ServerThread, model: InferenceModel, asynchronous: bool
) -> None:
    """A refused step installs nothing, so the session sends the state again with the next step."""
    rng = np.random.default_rng(17)
    frames = random_frames(rng, 6)
    starts = np.zeros(6, bool)
    starts[0] = True
    expected = step_loop(model, frames, starts)
    bad_frame = np.zeros((84, 84, 3), np.uint8)  # RGB-shaped on a GRAY session: refused

    async def moved_async(state: object) -> np.ndarray:
        async with (
            AsyncEncoderClient(server.address) as client,
            client.session(pixel_format="GRAY", initial_states={0: state}) as session,
        ):
            with pytest.raises(InvalidInputError):
                await session.step(bad_frame)
            return await session.step(frames[4])

    with EncoderClient(server.address) as client:
        with client.session(pixel_format="GRAY") as first:
            for t in range(4):
                first.step(frames[t], starts[t])
            state = first.get_state()
        if asynchronous:
            moved = asyncio.run(moved_async(state))
        else:
            with client.session(pixel_format="GRAY", initial_states={0: state}) as session:
                with pytest.raises(InvalidInputError):
                    session.step(bad_frame)
                moved = session.step(frames[4])
    np.testing.assert_allclose(moved, expected[4], atol=1e-4, rtol=0)


@pytest.mark.parametrize("bad", ["nan", "wrong shape", "foreign"])
def test_a_state_the_server_refuses_is_dropped_not_resent(
    server: ServerThread, model: InferenceModel, bad: str
) -> None:
    """A state refused for itself (the server names `set_states`) would be refused forever: the
    session drops it, raises once, and the next step runs as if it had never been set."""
    from vidlstm.clients import RecurrentState

    rng = np.random.default_rng(19)
    frames = random_frames(rng, 2)
    h = np.zeros((1, 256), np.float32)
    tensors = {"h": h, "c": h}
    weights_hash = model.weights_hash
    if bad == "nan":
        tensors = {"h": np.full_like(h, np.nan), "c": h}
    elif bad == "wrong shape":
        tensors = {"h": np.zeros((2, 256), np.float32), "c": h}
    else:
        weights_hash = "0" * 64
    expected = step_loop(model, frames, np.array([True, False]))
    with EncoderClient(server.address) as client, client.session(pixel_format="GRAY") as session:
        first = session.step(frames[0], True)
        session.set_state(RecurrentState(weights_hash, tensors))
        with pytest.raises((InvalidInputError, ModelMismatchError)):
            session.step(frames[1])
        second = session.step(frames[1])
    np.testing.assert_allclose(np.stack([first, second]), expected, atol=1e-4, rtol=0)
