"""Refused and delayed requests change nothing: no state leaks into a refused env, a busy stream is
not closed as idle, non-finite state is refused and a reset clears any state, and the queue limit
counts requests."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import torch
from conftest import ServerThread, keep_model_busy, random_frames, reference_embeddings

from vidlstm.clients import (
    AsyncEncoderClient,
    EncoderClient,
    InvalidInputError,
    SequenceInput,
)
from vidlstm.models import InferenceModel, LSTMCore
from vidlstm.service import ServerSettings
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.wire import raw_frames, tensor_from_proto, tensor_to_proto

CAPACITY = 32


@pytest.fixture
def queue_of_one(model: InferenceModel) -> Iterator[ServerThread]:
    """One queued request at most, and room for CAPACITY envs, so released slots are handed out again."""
    settings = ServerSettings(port=0, max_queued_jobs=1, state_capacity=CAPACITY)
    running = ServerThread(settings, model)
    yield running
    running.stop()


def test_a_refused_first_step_leaves_no_state_behind(
    queue_of_one: ServerThread, model: InferenceModel
) -> None:
    """First steps of new envs refused for a full queue bind nothing: re-sent, each starts from zero
    state, never from the state a slot's previous owner left (released slots are handed out again)."""
    rng = np.random.default_rng(21)
    frames = random_frames(rng, 8)
    zero_state = reference_embeddings(model, frames[:1])[0]
    first_frame = raw_frames(frames[:1], "GRAY")

    async def scenario() -> tuple[list[np.ndarray], int]:
        firsts, refused = [], 0
        env_ids = itertools.count()
        async with (
            AsyncEncoderClient(queue_of_one.address, timeout=120) as client,
            grpc.aio.insecure_channel(queue_of_one.address) as channel,
        ):
            stream = pb_grpc.EncoderStub(channel).EncodeStream()

            async def first_step(env: int) -> pb.StreamResponse:
                await stream.write(pb.StreamRequest(frames=first_frame, env_ids=[env]))
                return await stream.read()

            async def accepted(env: int, reply: pb.StreamResponse) -> np.ndarray:
                """The embedding of an accepted first step; the env is released to keep slots cycling."""
                assert not reply.error.message, reply.error.message
                await stream.write(pb.StreamRequest(release_env_ids=[env]))
                await stream.read()
                return tensor_from_proto(reply.embeddings)[0]

            async with client.session(CAPACITY, pixel_format="GRAY") as warm:  # state in every slot
                for frame in frames[:2]:
                    await warm.step(np.repeat(frame[None], CAPACITY, axis=0))
            for _ in range(12):  # rounds of load until some first steps were refused (a loaded machine: more)
                busy = asyncio.ensure_future(keep_model_busy(queue_of_one.address, 4))
                retry = []
                while not busy.done() and len(retry) < 20:
                    env = next(env_ids)
                    reply = await first_step(env)
                    if reply.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]:
                        retry.append(env)
                        await asyncio.sleep(0.02)
                        continue
                    firsts.append(await accepted(env, reply))
                await busy
                refused += len(retry)
                for env in retry:
                    firsts.append(await accepted(env, await first_step(env)))
                if refused:
                    break
            await stream.done_writing()
        return firsts, refused

    firsts, refused = asyncio.run(scenario())
    assert refused > 0, "the queue never filled: the test did not test a refusal"
    for embedding in firsts:
        np.testing.assert_allclose(embedding, zero_state, atol=1e-5, rtol=0)


def test_a_stream_waiting_for_a_busy_model_is_not_idle(model: InferenceModel) -> None:
    """Idle time is time spent waiting for the client, not for the model."""
    running = ServerThread(ServerSettings(port=0, stream_idle_timeout_s=1.0), model)
    rng = np.random.default_rng(5)
    frames = random_frames(rng, 12)
    expected = reference_embeddings(model, frames)

    async def actor() -> tuple[list[np.ndarray], float]:
        out, slowest = [], 0.0
        async with AsyncEncoderClient(running.address, timeout=120) as client:
            busy = asyncio.ensure_future(keep_model_busy(running.address, 4))
            async with client.session(pixel_format="GRAY") as session:
                for frame in frames:
                    started = time.monotonic()
                    out.append(await session.step(frame))
                    slowest = max(slowest, time.monotonic() - started)
                    await asyncio.sleep(0.2)
            await busy
        return out, slowest

    try:
        got, slowest = asyncio.run(actor())
    finally:
        running.stop()
    assert slowest > 1.0, f"no step waited past the idle timeout (slowest {slowest:.2f} s)"
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-4, rtol=0)


def _state_message(model: InferenceModel, h: np.ndarray) -> pb.State:
    return pb.State(
        weights_hash=model.weights_hash,
        tensors={"h": tensor_to_proto(h), "c": tensor_to_proto(np.zeros((1, 256), np.float32))},
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_state_is_refused(server: ServerThread, model: InferenceModel, bad: float) -> None:
    h = np.zeros((1, 256), np.float32)
    h[0, 7] = bad
    frames = raw_frames(np.zeros((1, 84, 84, 1), np.uint8), "GRAY")
    request = pb.EncodeRequest(sequences=[pb.Sequence(frames=frames, initial_state=_state_message(model, h))])
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EncoderStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Encode(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "state tensor 'h' holds NaN or infinite values" in str(raised.value.details())
        step = pb.StreamRequest(frames=frames, env_ids=[0], set_states={0: _state_message(model, h)})
        (reply,) = stub.EncodeStream(iter([step]), timeout=30)
    assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "NaN or infinite" in reply.error.message


def test_an_episode_start_sets_the_state_to_zero_even_from_nan() -> None:
    """0 * NaN is NaN: a reset must set the state, not multiply it."""
    torch.manual_seed(0)
    core = LSTMCore(8, 4).eval()
    features = torch.randn(3, 2, 8)
    starts = torch.tensor([[True, True], [False, True], [False, False]])
    nan_state = (torch.full((1, 2, 4), torch.nan), torch.full((1, 2, 4), torch.inf))
    zero_state = (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))
    with torch.inference_mode():
        from_nan, _ = core(features, nan_state, starts)
        from_zero, _ = core(features, zero_state, starts)
    assert torch.isfinite(from_nan).all()
    torch.testing.assert_close(from_nan, from_zero, atol=0, rtol=0)


def test_a_request_that_fits_an_idle_server_is_accepted(
    queue_of_one: ServerThread, model: InferenceModel
) -> None:
    """--max-queued-jobs counts requests: one Encode of 3 sequences is one request."""
    rng = np.random.default_rng(9)
    sequences = [random_frames(rng, length) for length in (3, 5, 2)]
    with EncoderClient(queue_of_one.address) as client:
        for _ in range(3):  # every time, not by luck of timing
            results = client.encode_many([SequenceInput(s) for s in sequences], pixel_format="GRAY")
            for frames, result in zip(sequences, results, strict=True):
                np.testing.assert_allclose(result.embeddings, reference_embeddings(model, frames), atol=1e-4)
        with pytest.raises(InvalidInputError):  # a refused request still refuses as a whole
            client.encode_many(
                [SequenceInput(sequences[0]), SequenceInput(np.zeros((1, 84, 84, 3), np.uint8))],
                pixel_format="GRAY",
            )


def test_a_response_over_the_message_limit_is_refused_before_any_work(model: InferenceModel) -> None:
    """100 tiny frames ask for 100 embeddings (~100 KB) from a server limited to 64 KiB messages:
    refused in-band before the model runs, and the stream's other envs go on as if it was never sent."""
    running = ServerThread(ServerSettings(port=0, max_message_bytes=65536, video_chunk_frames=32), model)
    rng = np.random.default_rng(13)
    frames = random_frames(rng, 3)
    expected = reference_embeddings(model, frames)
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.EncoderStub(channel)
            tiny = raw_frames(np.zeros((100, 2, 2, 1), np.uint8), "GRAY")
            requests = [
                pb.StreamRequest(frames=raw_frames(frames[:1], "GRAY"), env_ids=[0], request_id=1),
                pb.StreamRequest(frames=tiny, env_ids=list(range(1, 101)), request_id=2),
                pb.StreamRequest(frames=raw_frames(frames[1:2], "GRAY"), env_ids=[0], request_id=3),
                pb.StreamRequest(frames=raw_frames(frames[2:], "GRAY"), env_ids=[0], request_id=4),
            ]
            replies = list(stub.EncodeStream(iter(requests), timeout=60))
            with pytest.raises(grpc.RpcError) as raised:
                stub.Encode(pb.EncodeRequest(sequences=[pb.Sequence(frames=tiny)]), timeout=60)
    finally:
        running.stop()
    assert [r.request_id for r in replies] == [1, 2, 3, 4]
    assert replies[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "over the server's message limit of 65536 bytes" in replies[1].error.message
    assert [replies[i].error.message for i in (0, 2, 3)] == ["", "", ""]
    got = [tensor_from_proto(replies[i].embeddings)[0] for i in (0, 2, 3)]
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-4, rtol=0)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send fewer frames per call" in str(raised.value.details())


def test_more_sequences_than_state_slots_is_refused_as_unsplittable(model: InferenceModel) -> None:
    """A call that can never fit (one slot per sequence) is INVALID_ARGUMENT with the fix, not a
    RESOURCE_EXHAUSTED that retrying never helps."""
    running = ServerThread(ServerSettings(port=0, state_capacity=4), model)
    frames = random_frames(np.random.default_rng(2), 1)
    try:
        with EncoderClient(running.address) as client:
            four = client.encode_many([SequenceInput(frames)] * 4, pixel_format="GRAY")
            with pytest.raises(InvalidInputError, match=r"5 sequences in one call; each holds one of the "):
                client.encode_many([SequenceInput(frames)] * 5, pixel_format="GRAY")
    finally:
        running.stop()
    assert len(four) == 4


def test_a_stream_message_over_the_message_limit_ends_the_stream(model: InferenceModel) -> None:
    """gRPC refuses an oversized message before the server sees it: the stream ends, as documented."""
    running = ServerThread(ServerSettings(port=0, max_message_bytes=65536, video_chunk_frames=32), model)
    big = raw_frames(np.zeros((10, 84, 84, 1), np.uint8), "GRAY")  # ~70 KB
    small = raw_frames(np.zeros((1, 84, 84, 1), np.uint8), "GRAY")
    try:
        with grpc.insecure_channel(running.address) as channel:
            requests = [
                pb.StreamRequest(frames=small, env_ids=[0]),
                pb.StreamRequest(frames=big, env_ids=[1]),
            ]
            replies = []
            with pytest.raises(grpc.RpcError) as raised:
                replies.extend(pb_grpc.EncoderStub(channel).EncodeStream(iter(requests), timeout=30))
            assert wait_for(lambda: running.live_envs == 0)
    finally:
        running.stop()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(replies) <= 1


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()
