"""The KServe v2 front-end, driven by Triton's own client (tritonclient): every embedding is compared
with the in-process model and with the v1 stream over the same frames and resets."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from functools import partial

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from conftest import ServerThread, random_frames, reference_embeddings
from kserve_client import INPUT, MODEL, OUTPUT, InferenceServerException, frames_input, raw_infer, step

from vidlstm.clients import EncoderClient
from vidlstm.kserve import grpc_service_pb2 as kpb
from vidlstm.models import InferenceModel
from vidlstm.service import ServerSettings

ATOL = 1e-5


@pytest.fixture(autouse=True)
def no_sequence_left_behind(server: ServerThread) -> Iterator[None]:
    """The session's server is shared: a test that leaves a sequence open changes the live envs that
    other modules' tests count."""
    yield
    left = server.running.metrics.registry.get_sample_value("vidlstm_live_sequences")
    assert left == 0, f"{left} sequences left open on the shared server: end them (sequence_end)"


@pytest.fixture
def client(server: ServerThread) -> Iterator[tg.InferenceServerClient]:
    with tg.InferenceServerClient(server.address) as triton:
        yield triton


def _episode(rng: np.random.Generator, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, 84, 84, 1] and episode starts [T]: a start at 0 and a few random restarts."""
    starts = rng.random(steps) < 0.2
    starts[0] = True
    return random_frames(rng, steps), starts


def test_sequences_equal_the_in_process_model_and_the_v1_stream(
    server: ServerThread, client: tg.InferenceServerClient, model: InferenceModel
) -> None:
    """Three interleaved sequences with restarts (START on a running sequence zeroes its state)."""
    rng = np.random.default_rng(5)
    episodes = [_episode(rng, 12) for _ in range(3)]
    kserve = np.zeros((3, 12, 256), np.float32)
    for t in range(12):
        for index, (frames, starts) in enumerate(episodes):
            kserve[index, t] = step(client, 100 + index, frames[t], start=bool(starts[t]), end=t == 11)
    with EncoderClient(server.address) as v1:
        for index, (frames, starts) in enumerate(episodes):
            with v1.session(pixel_format="GRAY") as session:
                v1_stream = np.stack([session.step(f, bool(s)) for f, s in zip(frames, starts, strict=True)])
            np.testing.assert_allclose(kserve[index], v1_stream, atol=ATOL, rtol=0)
            np.testing.assert_allclose(
                kserve[index], reference_embeddings(model, frames, episode_start=starts), atol=ATOL, rtol=0
            )


def test_concurrent_sequences_from_several_aio_clients(server: ServerThread, model: InferenceModel) -> None:
    """8 sequences on 4 grpc.aio clients, all in flight at once, meet in one batcher."""
    rng = np.random.default_rng(6)
    episodes = [_episode(rng, 10) for _ in range(8)]

    async def sequence(triton: tga.InferenceServerClient, index: int) -> np.ndarray:
        frames, starts = episodes[index]
        out = []
        for t, frame in enumerate(frames):
            result = await triton.infer(
                MODEL,
                [frames_input(frame[None])],
                sequence_id=f"actor-{index}",
                sequence_start=bool(starts[t]),
                sequence_end=t == len(frames) - 1,
            )
            out.append(result.as_numpy(OUTPUT)[0])
        return np.stack(out)

    async def scenario() -> list[np.ndarray]:
        clients = [tga.InferenceServerClient(server.address) for _ in range(4)]
        try:
            return await asyncio.gather(*(sequence(clients[i % 4], i) for i in range(8)))
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    for (frames, starts), got in zip(episodes, asyncio.run(scenario()), strict=True):
        want = reference_embeddings(model, frames, episode_start=starts)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_a_stream_keeps_each_sequences_order_with_many_requests_in_flight(
    server: ServerThread, model: InferenceModel
) -> None:
    """40 frames of each of 4 sequences written without waiting: a sequence's requests run in the
    order the stream delivered them, whatever order the responses come back in."""
    rng = np.random.default_rng(7)
    episodes = [_episode(rng, 40) for _ in range(4)]
    answers: queue.SimpleQueue[tuple[object, object]] = queue.SimpleQueue()
    with tg.InferenceServerClient(server.address) as triton:
        triton.start_stream(callback=lambda result, error: answers.put((result, error)))
        for t in range(40):
            for index, (frames, starts) in enumerate(episodes):
                triton.async_stream_infer(
                    MODEL,
                    [frames_input(frames[t][None])],
                    request_id=f"{index}:{t}",
                    sequence_id=index + 1,
                    sequence_start=bool(starts[t]),
                    sequence_end=t == 39,
                )
        got = np.zeros((4, 40, 256), np.float32)
        for _ in range(160):
            result, error = answers.get(timeout=60)
            assert error is None, error
            index, t = map(int, result.get_response().id.split(":"))  # type: ignore[attr-defined]
            assert result.get_response().parameters["triton_final_response"].bool_param  # type: ignore[attr-defined]
            got[index, t] = result.as_numpy(OUTPUT)[0]  # type: ignore[attr-defined]
        triton.stop_stream()
    for (frames, starts), embeddings in zip(episodes, got, strict=True):
        want = reference_embeddings(model, frames, episode_start=starts)
        np.testing.assert_allclose(embeddings, want, atol=ATOL, rtol=0)


def test_aio_stream_infer_equals_the_model(server: ServerThread, model: InferenceModel) -> None:
    rng = np.random.default_rng(8)
    frames, starts = _episode(rng, 15)

    async def scenario() -> np.ndarray:
        async def requests():  # type: ignore[no-untyped-def]
            for t, frame in enumerate(frames):
                yield {
                    "model_name": MODEL,
                    "inputs": [frames_input(frame[None])],
                    "sequence_id": 77,
                    "sequence_start": bool(starts[t]),
                    "sequence_end": t == len(frames) - 1,
                    "request_id": str(t),
                }

        out = np.zeros((len(frames), 256), np.float32)
        async with tga.InferenceServerClient(server.address) as triton:
            async for result, error in triton.stream_infer(requests()):
                assert error is None, error
                out[int(result.get_response().id)] = result.as_numpy(OUTPUT)[0]
        return out

    want = reference_embeddings(model, frames, episode_start=starts)
    np.testing.assert_allclose(asyncio.run(scenario()), want, atol=ATOL, rtol=0)


def test_an_unknown_sequence_without_start_is_invalid_argument(client: tg.InferenceServerClient) -> None:
    frame = np.zeros((84, 84, 1), np.uint8)
    with pytest.raises(InferenceServerException, match="must specify the START flag") as refused:
        step(client, 424242, frame)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_after_end_the_sequence_must_start_again(
    client: tg.InferenceServerClient, model: InferenceModel
) -> None:
    frames = random_frames(np.random.default_rng(9), 3)
    step(client, 31, frames[0], start=True)
    step(client, 31, frames[1], end=True)
    with pytest.raises(InferenceServerException, match="START flag"):
        step(client, 31, frames[2])
    again = step(client, 31, frames[2], start=True, end=True)
    np.testing.assert_allclose(again, reference_embeddings(model, frames[2:])[0], atol=ATOL, rtol=0)


def test_integer_and_string_ids_are_distinct_and_int64_wraps_like_uint64(
    server: ServerThread, client: tg.InferenceServerClient, model: InferenceModel
) -> None:
    """As in Triton: "5" and 5 are different sequences; int64 -1 and uint64 2**64-1 the same one."""
    frames = random_frames(np.random.default_rng(10), 2)
    step(client, 5, frames[0], start=True)
    with pytest.raises(InferenceServerException, match="START flag"):
        step(client, "5", frames[1])
    request = kpb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name=INPUT, datatype="UINT8", shape=[1, 84, 84, 1])
    assert tensor is not None
    request.raw_input_contents.append(frames[1].tobytes())
    request.parameters["sequence_id"].uint64_param = 2**64 - 1
    request.parameters["sequence_start"].bool_param = True
    raw_infer(server.address, request)
    continued = step(client, -1, frames[0], end=True)  # int64 -1: the sequence started above
    want = reference_embeddings(model, frames[[1, 0]])[1]
    np.testing.assert_allclose(continued, want, atol=ATOL, rtol=0)
    step(client, 5, frames[1], end=True)


def test_string_ids_are_bounded_and_shown_short(client: tg.InferenceServerClient) -> None:
    """A held sequence keeps its id: ids over 256 bytes are refused, and messages cut ids short (a
    20 kB id echoed whole would exceed gRPC's metadata limit and arrive as another error)."""
    with pytest.raises(InferenceServerException, match="at most 256") as refused:
        step(client, "x" * 20_000, np.zeros((84, 84, 1), np.uint8))
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert len(refused.value.message()) < 300
    with pytest.raises(InferenceServerException, match=r"sequence 'yyyy.*\.\.\.' must specify the START"):
        step(client, "y" * 256, np.zeros((84, 84, 1), np.uint8))


def test_requests_without_a_sequence_id_are_one_step_episodes(
    client: tg.InferenceServerClient, model: InferenceModel
) -> None:
    """A batch of frames: each embedded from zero state, independently of the others."""
    frames = random_frames(np.random.default_rng(11), 6)
    result = client.infer(MODEL, [frames_input(frames)])
    got = result.as_numpy(OUTPUT)
    want = np.stack([reference_embeddings(model, frame[None])[0] for frame in frames])
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert result.get_output(OUTPUT).datatype == "FP32"


def test_typed_contents_equal_raw_contents(server: ServerThread, client: tg.InferenceServerClient) -> None:
    frames = random_frames(np.random.default_rng(12), 2)
    request = kpb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name=INPUT, datatype="UINT8", shape=list(frames.shape))
    tensor.contents.uint_contents.extend(frames.ravel().tolist())
    response = raw_infer(server.address, request)
    typed = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, -1)
    raw = client.infer(MODEL, [frames_input(frames)]).as_numpy(OUTPUT)
    np.testing.assert_array_equal(typed, raw)


def test_rgb_frames_of_another_size_are_converted_like_v1_raw_frames(
    server: ServerThread, client: tg.InferenceServerClient
) -> None:
    frames = random_frames(np.random.default_rng(13), 3, height=120, width=160, channels=3)
    kserve = client.infer(MODEL, [frames_input(frames)]).as_numpy(OUTPUT)
    with EncoderClient(server.address) as v1:
        one_step = [v1.encode(frame[None], pixel_format="RGB").embeddings[0] for frame in frames]
    np.testing.assert_allclose(kserve, np.stack(one_step), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: setattr(r.inputs[0], "datatype", "FP32"), "must be UINT8"),
        (lambda r: setattr(r.inputs[0], "name", "IMAGE"), "one input tensor named 'FRAMES'"),
        (lambda r: r.inputs[0].shape.__setitem__(3, 2), "C 1 \\(gray\\) or 3"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 10), "raw contents have 10 bytes"),
        (lambda r: r.outputs.add(name="LOGITS"), "unknown output 'LOGITS'"),
        (lambda r: r.parameters["sequence_id"].__setattr__("bool_param", True), "int64, uint64 or string"),
        (lambda r: r.parameters["sequence_start"].__setattr__("int64_param", 1), "must be a bool"),
        (lambda r: r.inputs[0].parameters["shared_memory_region"].__setattr__("string_param", "x"), "shared"),
        (lambda r: r.inputs[0].shape.__setitem__(0, 2), "batch-size 1"),
        (lambda r: r.inputs[0].contents.uint_contents.extend([0] * 84 * 84), "both raw_input_contents and"),
    ],
    ids=["dtype", "name", "channels", "raw-size", "output", "id-type", "flag-type", "shm", "batch", "both"],
)
def test_a_malformed_request_is_refused_and_changes_nothing(
    server: ServerThread, client: tg.InferenceServerClient, model: InferenceModel, change, message
) -> None:  # type: ignore[no-untyped-def]
    """Refused mid-sequence, then the sequence goes on as if the refused request never came."""
    frames = random_frames(np.random.default_rng(14), 3)
    sequence_id = 9000 + abs(hash(message)) % 1000
    first = step(client, sequence_id, frames[0], start=True)
    request = kpb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name=INPUT, datatype="UINT8", shape=[1, 84, 84, 1])
    request.raw_input_contents.append(frames[1].tobytes())
    request.parameters["sequence_id"].int64_param = sequence_id
    change(request)
    if request.inputs[0].shape[0] == 2:
        request.raw_input_contents[0] = frames[1].tobytes() * 2
    with pytest.raises(grpc.RpcError) as refused:
        raw_infer(server.address, request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() is not None
    assert __import__("re").search(message, refused.value.details()), refused.value.details()
    rest = [step(client, sequence_id, frames[t], end=t == 2) for t in (1, 2)]
    np.testing.assert_allclose(
        np.stack([first, *rest]), reference_embeddings(model, frames), atol=ATOL, rtol=0
    )


def test_a_refused_request_in_a_stream_is_answered_in_band(
    server: ServerThread, model: InferenceModel
) -> None:
    frames = random_frames(np.random.default_rng(15), 2)
    answers: queue.SimpleQueue[tuple[object, object]] = queue.SimpleQueue()
    with tg.InferenceServerClient(server.address) as triton:
        triton.start_stream(callback=lambda result, error: answers.put((result, error)))
        triton.async_stream_infer(MODEL, [frames_input(frames[:1])], sequence_id=555)  # no START
        first = answers.get(timeout=30)
        triton.async_stream_infer(
            MODEL, [frames_input(frames[1:])], sequence_id=555, sequence_start=True, sequence_end=True
        )
        second = answers.get(timeout=30)
        triton.stop_stream()
    assert first[0] is None
    assert "START flag" in str(first[1])
    assert second[1] is None, second[1]
    want = reference_embeddings(model, frames[1:])[0]
    np.testing.assert_allclose(second[0].as_numpy(OUTPUT)[0], want, atol=ATOL, rtol=0)  # type: ignore[attr-defined]


def test_metadata_and_config_describe_the_model_for_perf_analyzer(
    client: tg.InferenceServerClient, model: InferenceModel
) -> None:
    spec = model.model.spec.input
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("resnet")
    assert {"sequence", "statistics"} <= set(client.get_server_metadata().extensions)
    metadata = client.get_model_metadata(MODEL)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        (INPUT, "UINT8", [-1, spec.height, spec.width, spec.channels])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        (OUTPUT, "FP32", [-1, model.model.out_size])
    ]
    config = client.get_model_config(MODEL).config
    assert config.HasField("sequence_batching")
    assert config.max_batch_size > 0
    assert list(config.input[0].dims) == [spec.height, spec.width, spec.channels]
    assert [m.name for m in client.get_model_repository_index().models] == [MODEL]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("resnet")


def test_statistics_count_the_models_requests(client: tg.InferenceServerClient) -> None:
    before = client.get_inference_statistics(MODEL).model_stats[0]
    client.infer(MODEL, [frames_input(np.zeros((3, 84, 84, 1), np.uint8))])
    with pytest.raises(InferenceServerException):
        client.infer(MODEL, [frames_input(np.zeros((1, 84, 84, 2), np.uint8))])
    after = client.get_inference_statistics(MODEL).model_stats[0]
    assert after.inference_count - before.inference_count >= 3
    assert after.inference_stats.success.count > before.inference_stats.success.count
    assert after.inference_stats.fail.count > before.inference_stats.fail.count
    stats = after.inference_stats
    assert stats.compute_input.count == stats.compute_infer.count == stats.compute_output.count


def test_unimplemented_methods_say_why(client: tg.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="loaded at start") as refused:
        client.load_model(MODEL)
    assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
    with pytest.raises(InferenceServerException, match="shared memory"):
        client.get_system_shared_memory_status()
    with pytest.raises(InferenceServerException, match="no request tracing"):
        client.get_trace_settings()


def test_custom_names_from_settings(model: InferenceModel) -> None:
    settings = ServerSettings(
        port=0, kserve_model_name="encoder", kserve_input_name="obs", kserve_output_name="latent"
    )
    running = ServerThread(settings, model)
    try:
        with tg.InferenceServerClient(running.address) as triton:
            frames = np.zeros((1, 84, 84, 1), np.uint8)
            result = triton.infer("encoder", [frames_input(frames, "obs")])
            assert result.as_numpy("latent").shape == (1, model.model.out_size)
            with pytest.raises(InferenceServerException, match="unknown model"):
                triton.infer(MODEL, [frames_input(frames, "obs")])
    finally:
        running.stop()


@pytest.mark.parametrize("served", ["v1", "kserve"])
def test_the_frontends_setting_serves_only_the_protocols_named(model: InferenceModel, served: str) -> None:
    running = ServerThread(ServerSettings(port=0, frontends=(served,)), model)  # type: ignore[arg-type]
    try:
        frame = np.zeros((1, 84, 84, 1), np.uint8)
        kserve = partial(tg.InferenceServerClient(running.address).infer, MODEL, [frames_input(frame)])
        with EncoderClient(running.address, retry=None) as v1:
            if served == "v1":
                v1.encode(frame, pixel_format="GRAY")
                with pytest.raises(InferenceServerException, match="UNIMPLEMENTED"):
                    kserve()
            else:
                kserve()
                with pytest.raises(Exception, match=r"UNIMPLEMENTED|unimplemented|not implemented"):
                    v1.encode(frame, pixel_format="GRAY")
    finally:
        running.stop()


def test_v1_and_kserve_share_the_state_capacity(model: InferenceModel) -> None:
    """The pool is one: envs held by a v1 stream leave no room for a new sequence, and the refused
    START creates none (so a later non-START request is refused as unknown)."""
    running = ServerThread(ServerSettings(port=0, state_capacity=4), model)
    frame = np.zeros((84, 84, 1), np.uint8)
    try:
        with EncoderClient(running.address) as v1, tg.InferenceServerClient(running.address) as triton:
            with v1.session(4, pixel_format="GRAY") as session:
                session.step(np.zeros((4, 84, 84, 1), np.uint8))
                with pytest.raises(InferenceServerException, match="room for 0 more") as refused:
                    step(triton, 1, frame, start=True)
                assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
                assert running.live_envs == 4
            with pytest.raises(InferenceServerException, match="START flag"):
                step(triton, 1, frame)
            step(triton, 1, frame, start=True)
            assert running.live_envs == 1
            step(triton, 1, frame, end=True)
    finally:
        running.stop()


def test_reflection_lists_the_private_package(server: ServerThread) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in reply.list_services_response.service}
    assert "vidlstm.kserve.GRPCInferenceService" in names
    assert "vidlstm.v1.Encoder" in names
