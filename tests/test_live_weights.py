"""Live weights: pushed weights serve between two batches, every response names its version, and
what it names is exactly what it ran: each embedding equals the in-process model of that version,
the state carried as documented. Refused pushes change nothing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import safetensors.torch
import torch
import tritonclient.grpc as tg
from conftest import serving
from kserve_client import OUTPUT, frames_input
from pki import CertificateAuthority
from videos import write_video

from vidlstm.clients import (
    AsyncEncoderClient,
    EncoderClient,
    InvalidInputError,
    ModelMismatchError,
    PermissionDeniedError,
    RecurrentState,
    SequenceInput,
    ServerBusyError,
    ServerError,
    Tls,
    UnauthenticatedError,
    VideoPart,
    WeightsVersion,
)
from vidlstm.models import (
    CoreSpec,
    EncoderSpec,
    InferenceModel,
    ModelSpec,
    build_model,
    checkpoint_bytes,
    default_spec,
)
from vidlstm.models.video_chunks import prepared_chunks
from vidlstm.selection import FrameSelection
from vidlstm.service import ServerSettings
from vidlstm.v1 import encoder_pb2 as pb

CPU = torch.device("cpu")
ADMIN = "admin-token"
SHAPE = (84, 84, 1)  # the default model's input: no resizing on the server


def served_model(**options: bool) -> InferenceModel:
    """A model of its own for each server: pushes change a served model in place."""
    return InferenceModel(build_model(default_spec()), CPU, **options)  # type: ignore[arg-type]


def learner_weights(seed: int) -> bytes:
    """Weights of the default architecture from another seed (and name): what a learner pushes."""
    return checkpoint_bytes(build_model(ModelSpec(name=f"learner-{seed}", seed=seed)))


def reference(seed: int, **options: object) -> InferenceModel:
    return InferenceModel(build_model(ModelSpec(seed=seed)), CPU, **options)  # type: ignore[arg-type]


@dataclass
class EnvLog:
    """What one env sent and got, step by step, to replay in process afterwards."""

    frames: list[np.ndarray] = field(default_factory=list)  # [H, W, 1]
    starts: list[bool] = field(default_factory=list)
    versions: list[WeightsVersion] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)

    def record(self, frame: np.ndarray, start: bool, version: WeightsVersion, embedding: np.ndarray) -> None:
        self.frames.append(frame)
        self.starts.append(start)
        self.versions.append(version)
        self.embeddings.append(embedding)


def replay(log: EnvLog, models: dict[str, InferenceModel], *, reset_at_swap: bool = False) -> None:
    """Each step on the in-process model of the version its response named, the state carried from
    the step before (whatever version made it), or zeroed at a swap when the server resets."""
    state = None
    for index, (frame, start, version, got) in enumerate(
        zip(log.frames, log.starts, log.versions, log.embeddings, strict=True)
    ):
        if reset_at_swap and index and version.number != log.versions[index - 1].number:
            state = None
        model = models[version.weights_hash]
        expected, state = model.encode(np.moveaxis(frame, -1, 0)[None, None], state, np.array([[start]]))
        np.testing.assert_allclose(got, expected[0, 0], atol=1e-4, rtol=0, err_msg=f"step {index}, {version}")


@pytest.fixture
def seeded_models() -> dict[int, InferenceModel]:
    return {seed: reference(seed) for seed in range(12)}


def by_hash(models: dict[int, InferenceModel]) -> dict[str, InferenceModel]:
    return {model.weights_hash: model for model in models.values()}


def test_ten_pushes_under_64_streams_and_a_vector_stream_fail_nothing_and_mix_nothing(
    seeded_models: dict[int, InferenceModel],
) -> None:
    """Every step of 64 single-env streams and one 8-env stream, through 10 pushes, equals the
    in-process model of the version it names with the state carried across versions."""
    rng = np.random.default_rng(0)
    pushes = 10

    async def scenario(address: str) -> tuple[list[EnvLog], list[int]]:
        done = asyncio.Event()
        logs: list[EnvLog] = []

        async def single(client: AsyncEncoderClient) -> None:
            log = EnvLog()
            logs.append(log)
            async with client.session(pixel_format="GRAY") as session:
                for step in range(400):
                    if done.is_set() and step >= 20:
                        return
                    frame = rng.integers(0, 256, SHAPE, np.uint8)
                    start = bool(rng.random() < 0.05)
                    embedding = await session.step(frame, start)
                    assert session.weights is not None
                    log.record(frame, start, session.weights, embedding)

        async def vector(client: AsyncEncoderClient, envs: int) -> None:
            env_logs = [EnvLog() for _ in range(envs)]
            logs.extend(env_logs)
            async with client.session(envs, pixel_format="GRAY") as session:
                for step in range(400):
                    if done.is_set() and step >= 20:
                        return
                    frames = rng.integers(0, 256, (envs, *SHAPE), np.uint8)
                    starts = rng.random(envs) < 0.05
                    embeddings = await session.step(frames, starts)
                    assert session.weights is not None
                    for env, log in enumerate(env_logs):
                        log.record(frames[env], bool(starts[env]), session.weights, embeddings[env])

        async def learner(admin: AsyncEncoderClient) -> list[int]:
            numbers = []
            for seed in range(1, pushes + 1):
                await asyncio.sleep(0.1)
                result = await admin.push_weights(learner_weights(seed), learner_step=seed * 100)
                assert result.weights.learner_step == seed * 100
                numbers.append(result.weights.number)
            done.set()
            return numbers

        async with AsyncEncoderClient(address) as client, AsyncEncoderClient(address, token=ADMIN) as admin:
            actors = [single(client) for _ in range(64)] + [vector(client, 8)]
            *_, numbers = await asyncio.gather(*actors, learner(admin))
        return logs, numbers

    with serving(served_model(), admin_tokens=(ADMIN,)) as server:
        logs, numbers = asyncio.run(scenario(server.address))
        assert server.running.metrics.registry.get_sample_value("vidlstm_weights_version") == pushes + 1
        assert server.running.metrics.registry.get_sample_value("vidlstm_weight_installs_total") == pushes
    assert numbers == list(range(2, pushes + 2))
    assert {v.number for log in logs for v in log.versions} == set(range(1, pushes + 2))
    for log in logs:
        assert [v.number for v in log.versions] == sorted(v.number for v in log.versions)
        replay(log, by_hash(seeded_models) | {served_model().weights_hash: served_model()})


def test_reset_state_on_swap_starts_every_episode_again(seeded_models: dict[int, InferenceModel]) -> None:
    rng = np.random.default_rng(1)
    log = EnvLog()
    with (
        serving(served_model(), admin_tokens=(ADMIN,), reset_state_on_swap=True) as server,
        EncoderClient(server.address) as client,
        EncoderClient(server.address, token=ADMIN) as admin,
        client.session(pixel_format="GRAY") as session,
    ):
        for step in range(9):
            if step in (3, 6):
                admin.push_weights(learner_weights(step))
            frame = rng.integers(0, 256, SHAPE, np.uint8)
            embedding = session.step(frame)
            assert session.weights is not None
            log.record(frame, False, session.weights, embedding)
    assert [v.number for v in log.versions] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    replay(log, by_hash(seeded_models) | {served_model().weights_hash: served_model()}, reset_at_swap=True)


def test_encode_and_video_chunks_name_the_version_they_ran_on(
    seeded_models: dict[int, InferenceModel], tmp_path: Path
) -> None:
    """A unary call runs all its sequences on one version; a video's chunks on the version of their
    batch, the LSTM state carried from chunk to chunk."""
    video = write_video(tmp_path / "clip.mp4", frames=120, width=84, height=84)
    with (
        serving(served_model(), admin_tokens=(ADMIN,), video_chunk_frames=4) as server,
        EncoderClient(server.address) as client,
        EncoderClient(server.address, token=ADMIN) as admin,
    ):
        frames = np.random.default_rng(2).integers(0, 256, (2, 5, *SHAPE), np.uint8)
        before = client.encode(frames[0], pixel_format="GRAY")
        admin.push_weights(learner_weights(4))
        after = client.encode_many([SequenceInput(f) for f in frames], pixel_format="GRAY")
        parts = client.encode_video(video)
        first = next(parts)
        admin.push_weights(learner_weights(5))
        rest = [part for part in parts if part.summary is None]
    assert before.weights.number == 1
    assert {r.weights.number for r in after} == {2}
    np.testing.assert_allclose(after[1].embeddings, _encode(seeded_models[4], frames[1]), atol=1e-4)
    # The server computes chunks ahead of the client's reading: which chunk the push reaches first
    # is up to timing, but versions never go back and each chunk is exact for the version it names.
    numbers = [part.weights.number for part in [first, *rest] if part.weights is not None]
    assert numbers[0] == 2
    assert numbers == sorted(numbers)
    assert set(numbers) <= {2, 3}
    _check_video(video, [first, *rest], {2: seeded_models[4], 3: seeded_models[5]})


def _encode(model: InferenceModel, frames: np.ndarray) -> np.ndarray:
    return model.encode(np.moveaxis(frames, -1, 1)[:, None])[0][:, 0]


def _check_video(video: Path, parts: list[VideoPart], models: dict[int, InferenceModel]) -> None:
    """The chunks replayed in process: each on its version's model, the state carried."""
    selection = FrameSelection()
    chunks = prepared_chunks(
        video, default_spec().input, selection, chunk_frames=4, backend="pyav", threads=0
    )
    state = None
    for chunk, part in zip(chunks, parts, strict=True):
        assert part.weights is not None
        expected, state = models[part.weights.number].encode(chunk.frames[:, None], state)
        np.testing.assert_allclose(part.embeddings, expected[:, 0], atol=1e-4)


def test_client_held_state_is_accepted_within_the_version_window(
    seeded_models: dict[int, InferenceModel],
) -> None:
    frames = np.random.default_rng(3).integers(0, 256, (2, 3, *SHAPE), np.uint8)
    with (
        serving(served_model(), admin_tokens=(ADMIN,), state_version_window=2) as server,
        EncoderClient(server.address) as client,
        EncoderClient(server.address, token=ADMIN) as admin,
    ):
        first = client.encode(frames[0], pixel_format="GRAY")
        assert first.state is not None
        assert (first.state.version, first.state.lineage) == (1, first.weights.weights_hash)
        admin.push_weights(learner_weights(6))
        admin.push_weights(learner_weights(7))
        continued = client.encode(
            frames[1], pixel_format="GRAY", state=first.state
        )  # 2 installs old: accepted
        _, expected_state = served_model().encode(np.moveaxis(frames[0], -1, 1)[:, None])
        expected, _ = seeded_models[7].encode(np.moveaxis(frames[1], -1, 1)[:, None], expected_state)
        np.testing.assert_allclose(continued.embeddings, expected[:, 0], atol=1e-4)
        forged = [
            _state_with(first.state, lineage="0" * 64),
            _state_with(first.state, weights_hash="f" * 64),  # version 1 of this lineage had other weights
        ]
        for state in forged:
            with pytest.raises(ModelMismatchError, match="state comes from model"):
                client.encode(frames[1], pixel_format="GRAY", state=state)
        admin.push_weights(learner_weights(8))
        with pytest.raises(
            ModelMismatchError, match=r"version 1, more than 2 installs before .*version-window 2"
        ):
            client.encode(frames[1], pixel_format="GRAY", state=first.state)
        assert client.info().weights.version == 4


def _state_with(state: RecurrentState, **changes: str) -> RecurrentState:
    return dataclasses.replace(state, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RefusedPush:
    name: str
    data: bytes
    error: type[Exception]
    message: str
    token: str = ADMIN
    counted: bool = True  # a weights-level refusal: vidlstm_weight_install_failures_total counts it


def _nan_weights() -> bytes:
    model = build_model(default_spec())
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    return checkpoint_bytes(model)


def _refusals() -> Iterator[RefusedPush]:
    other = checkpoint_bytes(build_model(ModelSpec(core=CoreSpec(hidden_size=128))))
    yield RefusedPush(
        "other architecture",
        other,
        ModelMismatchError,
        r"another architecture .*core.hidden_size is 128, the served .* 256",
    )
    partial = {k: v for k, v in build_model(default_spec()).state_dict().items() if "core" not in k}
    yield RefusedPush(
        "missing tensors", safetensors.torch.save(partial), ModelMismatchError, r"missing tensors \['core\."
    )
    yield RefusedPush(
        "not safetensors", b"not a safetensors file at all", InvalidInputError, "not a safetensors file"
    )
    yield RefusedPush("NaN weights", _nan_weights(), InvalidInputError, "NaN or infinite")
    too_far = {"vidlstm.learner_step": str(2**63)}  # the protocol's learner_step is an int64
    state_dict = build_model(default_spec()).state_dict()
    yield RefusedPush(
        "learner step over int64",
        safetensors.torch.save(state_dict, metadata=too_far),
        InvalidInputError,
        "does not fit in an int64",
    )
    yield RefusedPush("empty upload", b"", InvalidInputError, "empty upload")
    yield RefusedPush("over the size limit", learner_weights(9), ServerBusyError, "over the limit of")
    yield RefusedPush(
        "inference token",
        learner_weights(9),
        PermissionDeniedError,
        "not push weights",
        token="user",
        counted=False,
    )
    yield RefusedPush(
        "no token", learner_weights(9), UnauthenticatedError, "admin credential", token="", counted=False
    )


@pytest.mark.parametrize("refused", list(_refusals()), ids=lambda r: r.name)
def test_a_refused_push_changes_nothing(refused: RefusedPush) -> None:
    """The weights, the version and the state a stream holds are exactly as before the refusal."""
    limit = 1 << 20 if refused.error is ServerBusyError else 1 << 30
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (3, *SHAPE), np.uint8)
    with (
        serving(
            served_model(), admin_tokens=(ADMIN,), auth_tokens=("user",), max_weights_bytes=limit
        ) as server,
        EncoderClient(server.address, token="user") as client,
        EncoderClient(server.address, token=refused.token or None) as pusher,
        client.session(pixel_format="GRAY") as session,
    ):
        got = [session.step(frames[0])]
        with pytest.raises(refused.error, match=refused.message):
            pusher.push_weights(refused.data)
        got.append(session.step(frames[1]))
        assert session.weights == WeightsVersion(1, served_model().weights_hash)
        assert client.info().weights.version == 1
        failures = server.running.metrics.registry.get_sample_value("vidlstm_weight_install_failures_total")
    assert failures == (1 if refused.counted else 0)
    np.testing.assert_allclose(np.stack(got), _encode(served_model(), frames[:2]), atol=1e-4)


def test_push_is_off_without_an_admin_credential() -> None:
    with serving(served_model()) as server, EncoderClient(server.address) as client:
        with pytest.raises(ServerError, match="PushWeights is off") as raised:
            client.push_weights(learner_weights(1))
        assert raised.value.code == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        assert not client.info().accepts_weights


def test_a_damaged_upload_is_refused_by_its_sha256() -> None:
    data = learner_weights(1)
    with (
        serving(served_model(), admin_tokens=(ADMIN,)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        push = channel.stream_unary(
            "/vidlstm.v1.Encoder/PushWeights",
            request_serializer=pb.PushWeightsRequest.SerializeToString,
            response_deserializer=pb.PushWeightsResponse.FromString,
        )
        requests = [
            pb.PushWeightsRequest(data=data[:1000], sha256="0" * 64),
            pb.PushWeightsRequest(data=data[1000:]),
        ]
        with pytest.raises(grpc.RpcError) as raised:
            push(iter(requests), metadata=[("authorization", f"Bearer {ADMIN}")], timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sha256" in (raised.value.details() or "")
        with EncoderClient(server.address) as client:
            assert client.info().weights.version == 1


def test_kserve_outputs_name_the_version_and_sequences_carry_state_across_a_push(
    seeded_models: dict[int, InferenceModel],
) -> None:
    frames = np.random.default_rng(5).integers(0, 256, (4, *SHAPE), np.uint8)
    with (
        serving(served_model(), admin_tokens=(ADMIN,)) as server,
        tg.InferenceServerClient(server.address) as triton,
        EncoderClient(server.address, token=ADMIN) as admin,
    ):
        log = EnvLog()
        for index, frame in enumerate(frames):
            if index == 2:
                admin.push_weights(learner_weights(10), learner_step=7)
            result = triton.infer(
                "vidlstm",
                [frames_input(frame[None])],
                sequence_id=11,
                sequence_start=index == 0,
                sequence_end=index == 3,
            )
            parameters = result.get_output(OUTPUT).parameters  # the output tensor's proto
            number = parameters["weights_version"].int64_param
            weights_hash = parameters["weights_hash"].string_param
            step = parameters["learner_step"].int64_param if "learner_step" in parameters else None
            log.record(
                frame, index == 0, WeightsVersion(number, weights_hash, step), result.as_numpy(OUTPUT)[0]
            )
    assert [(v.number, v.learner_step) for v in log.versions] == [(1, None), (1, None), (2, 7), (2, 7)]
    replay(log, by_hash(seeded_models) | {served_model().weights_hash: served_model()})


@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"precision": "fp16"}], ids=["bf16", "fp16"])
def test_pushed_weights_serve_in_the_models_precision(options: dict[str, object]) -> None:
    """The staged weights are cast to the CNN's precision: served equals the in-process model of
    the new weights in that precision."""
    frames = np.random.default_rng(6).integers(0, 256, (3, *SHAPE), np.uint8)
    model = InferenceModel(build_model(default_spec()), CPU, **options)  # type: ignore[arg-type]
    with (
        serving(model, admin_tokens=(ADMIN,)) as server,
        EncoderClient(server.address) as client,
        EncoderClient(server.address, token=ADMIN) as admin,
    ):
        admin.push_weights(learner_weights(11))
        served = client.encode(frames, pixel_format="GRAY")
    expected = _encode(reference(11, **options), frames)
    np.testing.assert_allclose(served.embeddings, expected, atol=1e-4)
    assert served.weights.weights_hash == reference(11).weights_hash  # the fp32 weights' hash


def test_pushed_weights_serve_through_a_compiled_cnn() -> None:
    """Compiled with live weights, the CNN takes its weights as graph inputs: a push changes what it
    computes (frozen, it would keep computing the old weights)."""
    frames = np.random.default_rng(7).integers(0, 256, (2, *SHAPE), np.uint8)
    model = InferenceModel(build_model(default_spec()), CPU, compile=True, live_weights=True)
    model.warm_up(2)
    with (
        serving(model, admin_tokens=(ADMIN,), max_batch_size=2) as server,
        EncoderClient(server.address) as client,
        EncoderClient(server.address, token=ADMIN) as admin,
    ):
        before = client.encode(frames, pixel_format="GRAY").embeddings
        admin.push_weights(learner_weights(3))
        after = client.encode(frames, pixel_format="GRAY").embeddings
    np.testing.assert_allclose(before, _encode(served_model(), frames), atol=1e-4)
    np.testing.assert_allclose(after, _encode(reference(3), frames), atol=1e-4)


def test_a_frozen_compiled_model_refuses_new_weights() -> None:
    model = InferenceModel(build_model(default_spec()), CPU, compile=True)
    with pytest.raises(RuntimeError, match="frozen"):
        model.stage_weights(learner_weights(1))


def test_an_admin_client_certificate_may_push_and_others_may_not(tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = CertificateAuthority(folder, "ca")
    server_id, learner, actor = (
        ca.issue("server", server=True),
        ca.issue("learner", server=False),
        ca.issue("actor", server=False),
    )
    tls = {"tls_cert": server_id.cert, "tls_key": server_id.key, "tls_client_ca": ca.identity.cert}
    with serving(served_model(), admin_client_names=("learner",), **tls) as server:
        address = f"localhost:{server.running.port}"
        as_actor = Tls(ca=ca.identity.cert, cert=actor.cert, key=actor.key)
        with EncoderClient(address, tls=as_actor) as client, pytest.raises(PermissionDeniedError):
            client.push_weights(learner_weights(1))
        as_learner = Tls(ca=ca.identity.cert, cert=learner.cert, key=learner.key)
        with EncoderClient(address, tls=as_learner) as client:
            assert client.push_weights(learner_weights(1)).weights.number == 2


def test_settings_refuse_admin_credentials_that_would_let_anyone_push() -> None:
    with pytest.raises(ValueError, match="an admin token is also an inference token"):
        ServerSettings(auth_tokens=("shared",), admin_tokens=("shared",))
    with pytest.raises(ValueError, match="need --tls-client-ca"):
        ServerSettings(admin_client_names=("learner",))


def test_settings_refuse_a_folder_to_watch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a folder: watch the"):
        ServerSettings(watch_weights=tmp_path)


def test_a_spec_that_spells_out_the_defaults_is_the_same_architecture() -> None:
    """{"features": 512} is the Nature CNN's default: the same architecture as {}."""
    spelled_out = ModelSpec(name="learner", encoder=EncoderSpec("nature", {"features": 512}), seed=8)
    staged = served_model().stage_weights(checkpoint_bytes(build_model(spelled_out)))
    assert staged.weights_hash == reference(8).weights_hash


def test_an_inference_model_leaves_the_callers_module_as_it_was() -> None:
    """A learner may evaluate its model in bf16 here and still push it: the cast is on a copy."""
    learner = build_model(ModelSpec(name="learner", seed=9))
    before = checkpoint_bytes(learner)
    InferenceModel(learner, CPU, precision="bf16")
    assert checkpoint_bytes(learner) == before


def test_settings_refuse_a_token_file_without_tokens(tmp_path: Path) -> None:
    empty = tmp_path / "tokens"
    empty.write_text("# nothing yet\n\n")
    for setting in ("admin_tokens_file", "auth_tokens_file"):
        with pytest.raises(ValueError, match="holds no tokens"):
            ServerSettings(**{setting: empty})  # type: ignore[arg-type]


def test_a_state_read_back_names_the_weights_that_made_it_not_the_ones_serving() -> None:
    """After a push, the state of an env last stepped on version 1 (or installed from a version-1
    state) still says version 1: the window counts from the weights that made it."""
    frame = np.random.default_rng(8).integers(0, 256, SHAPE, np.uint8)
    with (
        serving(served_model(), admin_tokens=(ADMIN,), state_version_window=1) as server,
        EncoderClient(server.address) as client,
        EncoderClient(server.address, token=ADMIN) as admin,
        client.session(pixel_format="GRAY") as session,
    ):
        session.step(frame)
        admin.push_weights(learner_weights(12))
        stepped_on_1 = session.get_state()
        assert (stepped_on_1.version, stepped_on_1.weights_hash) == (1, served_model().weights_hash)
        assert session.weights is not None
        assert session.weights.number == 1  # the last step's: reading state is no step
        with client.session(pixel_format="GRAY", initial_states={0: stepped_on_1}) as moved:
            assert moved.get_state().version == 1  # installed, not stepped: still version 1's
            moved.step(frame)
            assert moved.get_state().version == 2
        admin.push_weights(learner_weights(13))
        with pytest.raises(ModelMismatchError, match="more than 1 installs before"):
            client.encode(frame[None], pixel_format="GRAY", state=stepped_on_1)


def test_a_file_without_a_spec_is_checked_by_its_tensors_alone() -> None:
    plain = safetensors.torch.save(build_model(ModelSpec(seed=10)).state_dict())  # no metadata
    assert served_model().stage_weights(plain).weights_hash == reference(10).weights_hash
