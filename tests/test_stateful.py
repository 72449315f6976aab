"""A model-based test: random interleavings of streams, steps, resets, state moves, releases, Encode
calls, KServe v2 sequences (start, step, end, pipelined on a stream), cancels, malformed and over-limit
requests, bursts of concurrent requests of both protocols, and weights pushes (accepted or refused),
driven against a real server with tight limits over real channels. A plain in-process model of the
semantics is the reference: every accepted embedding and state must match it (on the weights pushed
last, the state carried across pushes), every refusal must leave it unchanged, and the server's live
streams and envs (read from /metrics) must always equal the reference's.

`VIDLSTM_STATEFUL_EXAMPLES` sets the number of runs (`make stateful` runs a long one).
"""

from __future__ import annotations

import os
import queue
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
import torch
from conftest import ServerThread, free_port
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule
from prometheus_client.parser import text_string_to_metric_families

from vidlstm.kserve import grpc_service_pb2 as kpb
from vidlstm.models import InferenceModel, InputSpec, ModelSpec, build_model, checkpoint_bytes, default_spec
from vidlstm.service import ServerSettings
from vidlstm.service.metrics import start_metrics_http
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc
from vidlstm.wire import raw_frames, tensor_from_proto, tensor_to_proto

ADMIN = "stateful-admin"
LIMITS = ServerSettings(
    port=0,
    admin_tokens=(ADMIN,),
    max_queued_jobs=2,
    state_capacity=10,
    max_streams=3,
    max_envs_per_stream=6,
    stream_idle_timeout_s=1.5,
    max_sequences_per_client=3,  # auth is off: one count for all
)
MAX_ENV_ID = 7
LEARNER_SEEDS = (0, 1, 2)  # pushed weights; 0: the default model's own, pushed again
MAX_SEQUENCE_ID = 4
MAX_ENVS_PER_STEP = 4
OK, INVALID, FOREIGN, BUSY = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
State = dict[str, np.ndarray]  # per env: h, c [1, 256]


class Reference:
    """The semantics, in process: one model step per frame with explicit state."""

    def __init__(self, model: InferenceModel) -> None:
        self.model = model
        self.zero: State = {s.name: np.zeros(s.shape, s.numpy_dtype) for s in model.state_specs}

    def step(self, frame: np.ndarray, state: State, start: bool) -> tuple[np.ndarray, State]:
        """frame uint8 [84, 84, 1] -> embedding [D], state after it."""
        batched = {k: torch.from_numpy(v[:, None].copy()) for k, v in state.items()}
        embeddings, new = self.model.encode(
            frame.transpose(2, 0, 1)[None, None], batched, np.array([[start]])
        )
        return embeddings[0, 0], {k: v[:, 0].numpy() for k, v in new.items()}

    def sequence(self, frames: np.ndarray, state: State, starts: np.ndarray) -> tuple[np.ndarray, State]:
        out = []
        for frame, start in zip(frames, starts, strict=True):
            embedding, state = self.step(frame, state, bool(start))
            out.append(embedding)
        return np.stack(out), state


@dataclass(eq=False)  # a stream is itself: compared by identity, never by its envs
class LiveStream:
    """One EncodeStream call, written and read step by step, and its envs' reference state."""

    stub: pb_grpc.EncoderStub
    envs: dict[int, State] = field(default_factory=dict)
    last_reply: float = field(default_factory=time.monotonic)
    requests: queue.SimpleQueue[pb.StreamRequest | None] = field(default_factory=queue.SimpleQueue)

    def __post_init__(self) -> None:
        self.call = self.stub.EncodeStream(iter(self.requests.get, None), timeout=300)

    def send(self, request: pb.StreamRequest) -> pb.StreamResponse | grpc.RpcError:
        self.requests.put(request)
        try:
            reply: pb.StreamResponse = next(self.call)
        except grpc.RpcError as error:
            return error
        self.last_reply = time.monotonic()
        return reply

    def close(self) -> None:
        """Ends the stream and waits for the server to end it too (so its stream count is down)."""
        self.requests.put(None)
        try:
            replies = list(self.call)
        except grpc.RpcError as error:
            replies = [error]  # it expired meanwhile
        assert all(
            isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.DEADLINE_EXCEEDED for r in replies
        )


def _state_message(state: State, weights_hash: str) -> pb.State:
    return pb.State(weights_hash=weights_hash, tensors={k: tensor_to_proto(v) for k, v in state.items()})


def _state_from(message: pb.State) -> State:
    return {k: tensor_from_proto(v).copy() for k, v in message.tensors.items()}


def _code(reply: pb.StreamResponse | grpc.RpcError) -> grpc.StatusCode:
    if isinstance(reply, grpc.RpcError):
        return reply.code()
    return next(c for c in grpc.StatusCode if c.value[0] == reply.error.code) if reply.error.message else OK


frames_st = st.integers(0, 2**32 - 1).map(
    lambda seed: np.random.default_rng(seed).integers(0, 256, (8, 84, 84, 1), dtype=np.uint8)
)
picks = st.integers(0, 2**16)
faults = st.sampled_from([None, None, None, "bad bytes", "foreign state", "nan state", "unknown return"])
sequence_faults = st.sampled_from([None, None, None, None, "bad bytes", "batch of two", "FP32"])


def _kserve_request(
    sequence_id: int, frames: np.ndarray, start: bool, end: bool, fault: str | None = None
) -> kpb.ModelInferRequest:
    """One frame of a sequence (two with the "batch of two" fault), as tritonclient builds it."""
    count = 2 if fault == "batch of two" else 1
    request = kpb.ModelInferRequest(model_name="vidlstm", id=f"{sequence_id}")
    request.inputs.add(
        name="FRAMES", datatype="FP32" if fault == "FP32" else "UINT8", shape=[count, 84, 84, 1]
    )
    data = frames[:count].tobytes()
    request.raw_input_contents.append(data[:-1] if fault == "bad bytes" else data)
    request.parameters["sequence_id"].int64_param = sequence_id
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    return request


class StatefulServer(RuleBasedStateMachine):
    streams = Bundle("streams")

    def __init__(self) -> None:
        super().__init__()
        self.server = SERVER
        self.ref = REFERENCE
        self.stub = pb_grpc.EncoderStub(CHANNEL)
        self.open: list[LiveStream] = []
        self.saved: list[State] = [self.ref.zero]
        self.sequences: dict[int, State] = {}  # KServe sequence id -> its state after its last step

    # -- streams -------------------------------------------------------------------------------

    @rule(target=streams)
    def open_stream(self) -> LiveStream:
        stream = LiveStream(self.stub)
        reply = stream.send(pb.StreamRequest(request_id=1))  # an empty step: the stream is open now
        if len(self.open) >= LIMITS.max_streams:
            assert _code(reply) == BUSY, reply
            return stream  # refused: never enters self.open
        assert _code(reply) == OK, reply
        self.open.append(stream)
        return stream

    @rule(stream=consumes(streams))
    def close_stream(self, stream: LiveStream) -> None:
        if stream in self.open:
            self.open.remove(stream)
            stream.close()

    @rule(stream=consumes(streams))
    def cancel_stream(self, stream: LiveStream) -> None:
        if stream in self.open:
            self.open.remove(stream)
            stream.call.cancel()
            self._wait_for_metrics()

    @rule(
        stream=streams,
        data=st.data(),
        frames=frames_st,
        fault=faults,
    )
    def step(self, stream: LiveStream, data: st.DataObject, frames: np.ndarray, fault: str | None) -> None:
        if stream not in self.open:
            return
        request, plan = self._step_request(stream, data, frames[:MAX_ENVS_PER_STEP], fault)
        idle = time.monotonic() - stream.last_reply
        reply = stream.send(request)
        if _code(reply) == grpc.StatusCode.DEADLINE_EXCEEDED:
            assert idle >= LIMITS.stream_idle_timeout_s - 0.1, f"closed as idle after {idle:.2f} s"
            self.open.remove(stream)
            return
        self._check_step(stream, request, plan, reply, expected=self._expected_code(stream, request, fault))

    def _step_request(
        self, stream: LiveStream, data: st.DataObject, frames: np.ndarray, fault: str | None
    ) -> tuple[pb.StreamRequest, dict[int, State]]:
        """A request and the state each env will start its step from (installs applied)."""
        env_ids = data.draw(
            st.lists(st.integers(0, MAX_ENV_ID), min_size=1, max_size=MAX_ENVS_PER_STEP, unique=True)
        )
        starts = data.draw(st.lists(st.booleans(), min_size=len(env_ids), max_size=len(env_ids)))
        installs = {
            env: self._saved(pick)
            for env, pick in data.draw(st.dictionaries(st.integers(0, MAX_ENV_ID), picks, max_size=2)).items()
        }
        known = set(stream.envs) | set(env_ids) | set(installs)
        returns = [
            e for e in data.draw(st.lists(st.integers(0, MAX_ENV_ID), max_size=3, unique=True)) if e in known
        ]
        releases = data.draw(st.lists(st.integers(0, MAX_ENV_ID), max_size=2, unique=True))
        weights_hash = self.ref.model.weights_hash
        request = pb.StreamRequest(
            frames=raw_frames(frames[: len(env_ids)], "GRAY"),
            env_ids=env_ids,
            episode_start=starts,
            set_states={env: _state_message(state, weights_hash) for env, state in installs.items()},
            return_state_env_ids=returns,
            release_env_ids=releases,
            request_id=data.draw(st.integers(0, 2**31)),
        )
        if fault == "bad bytes":
            request.frames.raw.data = request.frames.raw.data[:-1]
        elif fault == "foreign state":
            request.set_states[MAX_ENV_ID + 1].CopyFrom(_state_message(self.ref.zero, "0" * 64))
        elif fault == "nan state":
            poisoned = {k: np.full_like(v, np.nan) for k, v in self.ref.zero.items()}
            request.set_states[MAX_ENV_ID + 1].CopyFrom(_state_message(poisoned, weights_hash))
        elif fault == "unknown return":
            request.return_state_env_ids.append(MAX_ENV_ID + 2)
        plan = {env: stream.envs.get(env, self.ref.zero) for env in known}
        plan.update(installs)
        return request, plan

    def _expected_code(
        self, stream: LiveStream, request: pb.StreamRequest, fault: str | None
    ) -> grpc.StatusCode:
        if fault is not None:
            return FOREIGN if fault == "foreign state" else INVALID
        new = {*request.env_ids, *request.set_states} - set(stream.envs)
        if len(stream.envs) + len(new) > LIMITS.max_envs_per_stream:
            return BUSY
        if len(new) > LIMITS.state_capacity - self._live_envs():
            return BUSY
        return OK

    def _check_step(
        self,
        stream: LiveStream,
        request: pb.StreamRequest,
        plan: dict[int, State],
        reply: pb.StreamResponse | grpc.RpcError,
        expected: grpc.StatusCode | None,
    ) -> None:
        """Checks a reply against the reference and applies it; `expected` None: OK or BUSY."""
        code = _code(reply)
        assert isinstance(reply, pb.StreamResponse), reply
        assert reply.request_id == request.request_id
        if expected is None:
            assert code in (OK, BUSY), reply.error
        else:
            assert code == expected, (code, reply.error.message)
        if code != OK:
            return  # a refusal changes nothing
        assert reply.weights.weights_hash == self.ref.model.weights_hash
        frames = np.frombuffer(request.frames.raw.data, np.uint8).reshape(request.frames.raw.shape)
        embeddings = tensor_from_proto(reply.embeddings)
        after = dict(plan)
        for index, env in enumerate(request.env_ids):
            want, after[env] = self.ref.step(frames[index], plan[env], request.episode_start[index])
            np.testing.assert_allclose(embeddings[index], want, atol=1e-4, rtol=0)
        assert set(reply.states) == set(request.return_state_env_ids)
        for env, message in reply.states.items():
            state = _state_from(message)
            for name, value in after[env].items():
                np.testing.assert_allclose(state[name], value, atol=1e-4, rtol=0)
            self.saved.append(after[env])
        stream.envs = {env: state for env, state in after.items() if env not in request.release_env_ids}

    # -- unary calls ---------------------------------------------------------------------------

    @rule(data=st.data(), frames=frames_st, timeout=st.sampled_from([None, None, 0.001]))
    def encode(self, data: st.DataObject, frames: np.ndarray, timeout: float | None) -> None:
        request, expected = self._encode_request(data, frames)
        expected_code = self._encode_code(request)
        response = self._encode_or_error(request, timeout or 60)
        if isinstance(response, grpc.RpcError):
            if timeout and response.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self._wait_for_metrics()  # cancelled: its slots come back a moment later
            else:
                assert response.code() == expected_code, response
            return
        assert expected_code == OK
        self._check_encode(request, expected, response)

    def _encode_request(
        self, data: st.DataObject, frames: np.ndarray
    ) -> tuple[pb.EncodeRequest, list[tuple[np.ndarray, State]]]:
        lengths = data.draw(st.lists(st.integers(1, 2), min_size=1, max_size=3))  # <= 6 frames
        request = pb.EncodeRequest(return_state=True)
        expected = []
        offset = 0
        for length in lengths:
            starts = data.draw(st.lists(st.booleans(), min_size=length, max_size=length))
            pick = data.draw(st.none() | picks)
            initial = None if pick is None else self._saved(pick)
            sequence = request.sequences.add(frames=raw_frames(frames[offset : offset + length], "GRAY"))
            sequence.episode_start.extend(starts)
            if initial is not None:
                sequence.initial_state.CopyFrom(_state_message(initial, self.ref.model.weights_hash))
            expected.append(
                self.ref.sequence(
                    frames[offset : offset + length], initial or self.ref.zero, np.array(starts)
                )
            )
            offset += length
        return request, expected

    def _encode_code(self, request: pb.EncodeRequest) -> grpc.StatusCode:
        return BUSY if len(request.sequences) > LIMITS.state_capacity - self._live_envs() else OK

    def _check_encode(
        self, request: pb.EncodeRequest, expected: list[tuple[np.ndarray, State]], response: pb.EncodeResponse
    ) -> None:
        for (embeddings, state), result in zip(expected, response.results, strict=True):
            np.testing.assert_allclose(tensor_from_proto(result.embeddings), embeddings, atol=1e-4, rtol=0)
            final = _state_from(result.final_state)
            for name, value in state.items():
                np.testing.assert_allclose(final[name], value, atol=1e-4, rtol=0)
            self.saved.append(state)

    # -- KServe v2 sequences -------------------------------------------------------------------

    @rule(
        sequence_id=st.integers(1, MAX_SEQUENCE_ID),
        frames=frames_st,
        start=st.booleans(),
        end=st.booleans(),
        fault=sequence_faults,
    )
    def sequence_step(
        self, sequence_id: int, frames: np.ndarray, start: bool, end: bool, fault: str | None
    ) -> None:
        request = _kserve_request(sequence_id, frames, start, end, fault)
        reply = _kserve_call(MODEL_INFER, request)
        self._check_sequence_step(request, frames[0], reply, self._sequence_code(request, fault))

    @rule(sequence_id=st.integers(1, MAX_SEQUENCE_ID), frames=frames_st, data=st.data())
    def pipelined_sequence(self, sequence_id: int, frames: np.ndarray, data: st.DataObject) -> None:
        """Several requests of one sequence written on a stream without waiting: they run in order."""
        count = data.draw(st.integers(2, 6))
        starts = [data.draw(st.booleans()) for _ in range(count)]
        requests = [
            _kserve_request(sequence_id, frames[i : i + 1], starts[i], i == count - 1) for i in range(count)
        ]
        for index, request in enumerate(requests):
            request.id = str(index)
        replies = {}
        for answer in MODEL_STREAM_INFER(iter(requests), timeout=60):
            replies[int(answer.infer_response.id)] = answer
        for index, request in enumerate(requests):
            answer = replies[index]
            expected = self._sequence_code(request, None)
            reply: kpb.ModelInferResponse | grpc.StatusCode = answer.infer_response
            if answer.error_message:
                reply = (
                    BUSY
                    if "room for" in answer.error_message or "limit per client" in answer.error_message
                    else INVALID
                )
            self._check_sequence_step(request, frames[index], reply, expected)

    def _sequence_code(self, request: kpb.ModelInferRequest, fault: str | None) -> grpc.StatusCode:
        sequence_id = request.parameters["sequence_id"].int64_param
        if fault is not None:
            return INVALID
        if sequence_id in self.sequences:
            return OK
        if not request.parameters["sequence_start"].bool_param:
            return INVALID
        if (
            len(self.sequences) >= LIMITS.max_sequences_per_client
            or self._live_envs() >= LIMITS.state_capacity
        ):
            return BUSY
        return OK

    def _check_sequence_step(
        self,
        request: kpb.ModelInferRequest,
        frame: np.ndarray,
        reply: kpb.ModelInferResponse | grpc.RpcError | grpc.StatusCode,
        expected: grpc.StatusCode | None,
    ) -> None:
        """Checks a sequence step against the reference and applies it; `expected` None: OK or BUSY."""
        code = (
            reply
            if isinstance(reply, grpc.StatusCode)
            else _code(reply)
            if isinstance(reply, grpc.RpcError)
            else OK
        )
        if expected is None:
            assert code in (OK, BUSY), reply
        else:
            assert code == expected, (code, reply)
        if code != OK:
            return  # a refusal changes nothing
        assert isinstance(reply, kpb.ModelInferResponse)
        sequence_id = request.parameters["sequence_id"].int64_param
        start = request.parameters["sequence_start"].bool_param
        state = self.ref.zero if start else self.sequences[sequence_id]
        want, after = self.ref.step(frame, state, start)
        got = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(1, -1)[0]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        if request.parameters["sequence_end"].bool_param:
            self.sequences.pop(sequence_id, None)
        else:
            self.sequences[sequence_id] = after

    # -- concurrency and time ------------------------------------------------------------------

    @precondition(lambda self: self.open)
    @rule(data=st.data(), frames=frames_st)
    def burst(self, data: st.DataObject, frames: np.ndarray) -> None:
        """Steps on every open stream and Encode calls at once: more requests than the queue holds.
        Each is answered correctly or refused (queue or slots full); refusals change nothing."""
        steps = [(stream, *self._step_request(stream, data, frames, None)) for stream in self.open]
        encodes = [self._encode_request(data, frames) for _ in range(data.draw(st.integers(1, 3)))]
        # Sequences that exist, stepped (never started: whether a START fits depends on the others).
        sequence_steps = [_kserve_request(i, frames[i : i + 1], False, False) for i in self.sequences]
        with ThreadPoolExecutor(len(steps) + len(encodes) + len(sequence_steps)) as pool:
            step_replies = [pool.submit(stream.send, request) for stream, request, _ in steps]
            encode_replies = [pool.submit(self._encode_or_error, request) for request, _ in encodes]
            sequence_replies = [pool.submit(_kserve_call, MODEL_INFER, r) for r in sequence_steps]
        for request, reply in zip(sequence_steps, sequence_replies, strict=True):
            sequence_id = request.parameters["sequence_id"].int64_param
            self._check_sequence_step(request, frames[sequence_id], reply.result(), expected=None)
        for (stream, request, plan), reply in zip(steps, step_replies, strict=True):
            self._check_step(stream, request, plan, reply.result(), expected=None)
        for (request, expected), reply in zip(encodes, encode_replies, strict=True):
            result = reply.result()
            if isinstance(result, grpc.RpcError):
                assert result.code() == BUSY, result
            else:
                self._check_encode(request, expected, result)

    def _encode_or_error(
        self, request: pb.EncodeRequest, timeout: float = 60
    ) -> pb.EncodeResponse | grpc.RpcError:
        try:
            return self.stub.Encode(request, timeout=timeout)  # type: ignore[no-any-return]
        except grpc.RpcError as error:
            return error

    @precondition(lambda self: self.open)
    @rule()
    def go_idle(self) -> None:
        """Past the idle timeout every open stream is closed and its state dropped."""
        time.sleep(LIMITS.stream_idle_timeout_s + 0.7)
        for stream in self.open:
            reply = stream.send(pb.StreamRequest())
            assert _code(reply) == grpc.StatusCode.DEADLINE_EXCEEDED, reply
        self.open.clear()

    # -- weights -------------------------------------------------------------------------------

    @rule(seed=st.sampled_from(sorted(LEARNER_SEEDS)), foreign=st.booleans())
    def push_weights(self, seed: int, foreign: bool) -> None:
        """A learner's push: the reference switches to those weights and keeps every state it holds
        (the server carries state across versions); weights of another architecture change nothing."""
        data = FOREIGN_WEIGHTS if foreign else WEIGHTS[seed]
        try:
            PUSH(iter([pb.PushWeightsRequest(data=data)]), metadata=[("authorization", f"Bearer {ADMIN}")])
            code = OK
        except grpc.RpcError as error:
            code = error.code()
        assert code == (FOREIGN if foreign else OK)
        if not foreign:
            self.ref.model = LEARNER_MODELS[seed]

    def _saved(self, pick: int) -> State:
        """A state seen before (zero state included), picked without depending on how many there are,
        so a rerun of the same example draws the same data."""
        return self.saved[pick % len(self.saved)]

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def server_holds_what_the_reference_holds(self) -> None:
        assert self._metrics() == (len(self.open), self._live_envs())

    def _live_envs(self) -> int:
        return sum(len(stream.envs) for stream in self.open) + len(self.sequences)

    def _metrics(self) -> tuple[int, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as page:
            text = page.read().decode()
        values = {
            sample.name: int(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        return values["vidlstm_live_streams"], values["vidlstm_live_envs"]

    def _wait_for_metrics(self) -> None:
        """Cancels end on the server a moment later: wait until it holds what the reference holds."""
        deadline = time.monotonic() + 10
        while self._metrics() != (len(self.open), self._live_envs()) and time.monotonic() < deadline:
            time.sleep(0.02)

    def teardown(self) -> None:
        for stream in self.open:
            stream.close()
        frame = np.zeros((1, 84, 84, 1), np.uint8)
        for sequence_id in list(self.sequences):
            _kserve_call(MODEL_INFER, _kserve_request(sequence_id, frame, False, True))
            del self.sequences[sequence_id]
        self._wait_for_metrics()
        assert self._metrics() == (0, 0)


SERVER: ServerThread
REFERENCE: Reference
WEIGHTS: dict[int, bytes]
FOREIGN_WEIGHTS: bytes
LEARNER_MODELS: dict[int, InferenceModel]
PUSH: grpc.StreamUnaryMultiCallable
CHANNEL: grpc.Channel
METRICS_PORT: int
MODEL_INFER: grpc.UnaryUnaryMultiCallable
MODEL_STREAM_INFER: grpc.StreamStreamMultiCallable


def _kserve_call(
    method: grpc.UnaryUnaryMultiCallable, request: kpb.ModelInferRequest
) -> kpb.ModelInferResponse | grpc.RpcError:
    try:
        return method(request, timeout=60)  # type: ignore[no-any-return]
    except grpc.RpcError as error:
        return error


@pytest.fixture(scope="module")
def live_server() -> Iterator[None]:
    global SERVER, REFERENCE, CHANNEL, METRICS_PORT, MODEL_INFER, MODEL_STREAM_INFER
    global WEIGHTS, FOREIGN_WEIGHTS, LEARNER_MODELS, PUSH
    cpu = torch.device("cpu")
    learners = {seed: build_model(ModelSpec(name=f"learner-{seed}", seed=seed)) for seed in LEARNER_SEEDS}
    WEIGHTS = {seed: checkpoint_bytes(model) for seed, model in learners.items()}
    LEARNER_MODELS = {seed: InferenceModel(model, cpu) for seed, model in learners.items()}
    FOREIGN_WEIGHTS = checkpoint_bytes(build_model(ModelSpec(input=InputSpec(height=64, width=64))))
    served = InferenceModel(build_model(default_spec()), cpu)  # its own: pushes change it in place
    SERVER = ServerThread(LIMITS, served)
    METRICS_PORT = free_port()
    stop_metrics = start_metrics_http(SERVER.running.metrics, "127.0.0.1", METRICS_PORT)
    REFERENCE = Reference(LEARNER_MODELS[0])
    CHANNEL = grpc.insecure_channel(SERVER.address)
    PUSH = CHANNEL.stream_unary(
        "/vidlstm.v1.Encoder/PushWeights",
        request_serializer=pb.PushWeightsRequest.SerializeToString,
        response_deserializer=pb.PushWeightsResponse.FromString,
    )
    MODEL_INFER = CHANNEL.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=kpb.ModelInferRequest.SerializeToString,
        response_deserializer=kpb.ModelInferResponse.FromString,
    )
    MODEL_STREAM_INFER = CHANNEL.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=kpb.ModelInferRequest.SerializeToString,
        response_deserializer=kpb.ModelStreamInferResponse.FromString,
    )
    yield
    CHANNEL.close()
    stop_metrics()
    SERVER.stop()


StatefulServer.TestCase.settings = settings(
    max_examples=int(os.environ.get("VIDLSTM_STATEFUL_EXAMPLES", "10")),
    stateful_step_count=20,
    deadline=None,
    # No shrinking: the server's timing makes reruns differ, so shrinking crawls; the failing run's
    # steps are printed as they were.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.slow
@pytest.mark.usefixtures("live_server")
class TestStatefulServer(StatefulServer.TestCase):  # type: ignore[name-defined]
    pass
