"""KServe v2 sequences under limits, auth and drain: per-client ids, refusals that change nothing,
idle expiry, open probes, TLS and tokens with tritonclient's own options."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from conftest import ServerThread, keep_model_busy, random_frames, reference_embeddings, serving
from kserve_client import MODEL, OUTPUT, InferenceServerException, frames_input, step
from pki import CertificateAuthority, Identity

from vidlstm.models import InferenceModel

ATOL = 1e-5
FRAME = np.zeros((84, 84, 1), np.uint8)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_sequence_ids_are_scoped_per_token(model: InferenceModel) -> None:
    """Two clients use the same id: each gets its own sequence, neither can step or end the other's."""
    frames = random_frames(np.random.default_rng(20), 3)
    with (
        serving(model, auth_tokens=("alice", "bob")) as running,
        tg.InferenceServerClient(running.address) as t,
    ):
        alice, bob = _bearer("alice"), _bearer("bob")
        step(t, 7, frames[0], start=True, headers=alice)
        with pytest.raises(InferenceServerException, match="START flag"):
            step(t, 7, frames[1], headers=bob)  # bob has no sequence 7: alice's is not his
        bob_first = step(t, 7, frames[2], start=True, end=True, headers=bob)
        alice_rest = [step(t, 7, frames[i], end=i == 2, headers=alice) for i in (1, 2)]
        assert running.live_envs == 0
    np.testing.assert_allclose(bob_first, reference_embeddings(model, frames[2:])[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(alice_rest, reference_embeddings(model, frames)[1:], atol=ATOL, rtol=0)


def test_inference_needs_a_token_but_the_probes_do_not(model: InferenceModel) -> None:
    with serving(model, auth_tokens=("secret",)) as running, tg.InferenceServerClient(running.address) as t:
        assert t.is_server_live()
        assert t.is_server_ready()
        assert t.is_model_ready(MODEL)
        with pytest.raises(InferenceServerException, match="bearer token") as refused:
            t.infer(MODEL, [frames_input(FRAME[None])])
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="bearer token"):
            t.get_model_metadata(MODEL)
        t.infer(MODEL, [frames_input(FRAME[None])], headers=_bearer("secret"))
        t.infer(MODEL, [frames_input(FRAME[None])], headers={"authorization": "bearer secret"})


def test_the_bearer_scheme_is_case_insensitive_and_names_one_client(model: InferenceModel) -> None:
    """RFC 7235: "bearer" is "Bearer"; the same token in either spelling is the same client."""
    with serving(model, auth_tokens=("secret",)) as running, tg.InferenceServerClient(running.address) as t:
        step(t, 4, FRAME, start=True, headers={"authorization": "bearer secret"})
        step(t, 4, FRAME, end=True, headers={"authorization": "BEARER  secret"})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    ca = CertificateAuthority(tmp_path_factory.mktemp("pki"), "ca")
    return {
        "ca": ca.identity,
        "server": ca.issue("server", server=True),
        "actor-1": ca.issue("actor-1", server=False),
        "actor-2": ca.issue("actor-2", server=False),
    }


def test_mutual_tls_scopes_sequences_per_client_certificate(
    model: InferenceModel, pki: dict[str, Identity]
) -> None:
    frames = random_frames(np.random.default_rng(21), 2)
    settings = {"tls_cert": pki["server"].cert, "tls_key": pki["server"].key, "tls_client_ca": pki["ca"].cert}

    def client(name: str) -> tg.InferenceServerClient:
        return tg.InferenceServerClient(
            running.address.replace("127.0.0.1", "localhost"),
            ssl=True,
            root_certificates=str(pki["ca"].cert),
            private_key=str(pki[name].key),
            certificate_chain=str(pki[name].cert),
        )

    with serving(model, **settings) as running, client("actor-1") as one, client("actor-2") as two:
        step(one, 3, frames[0], start=True)
        with pytest.raises(InferenceServerException, match="START flag"):
            step(two, 3, frames[1])
        second = step(one, 3, frames[1], end=True)
    np.testing.assert_allclose(second, reference_embeddings(model, frames)[1], atol=ATOL, rtol=0)


def test_the_per_client_sequence_limit_refuses_new_sequences_only(model: InferenceModel) -> None:
    frames = random_frames(np.random.default_rng(22), 3)
    with (
        serving(model, max_sequences_per_client=2) as running,
        tg.InferenceServerClient(running.address) as t,
    ):
        firsts = [step(t, i, frames[0], start=True) for i in (1, 2)]
        with pytest.raises(InferenceServerException, match="limit per client is 2") as refused:
            step(t, 3, frames[0], start=True)
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert running.live_envs == 2
        with pytest.raises(InferenceServerException, match="START flag"):
            step(t, 3, frames[1])  # the refused START created nothing
        seconds = [step(t, i, frames[1], end=True) for i in (1, 2)]
        step(t, 3, frames[0], start=True, end=True)  # room again
    want = reference_embeddings(model, frames[:2])
    for first, second in zip(firsts, seconds, strict=True):
        np.testing.assert_allclose([first, second], want, atol=ATOL, rtol=0)


def test_a_start_refused_for_a_full_queue_creates_no_sequence(model: InferenceModel) -> None:
    """8 STARTs at once while a long call holds the model and the queue holds one request: the
    refused ones leave no sequence behind (the next request without START is refused as unknown)
    and no state slot held."""
    frames = random_frames(np.random.default_rng(23), 2)

    async def scenario(running: ServerThread) -> list[BaseException | None]:
        async with tga.InferenceServerClient(running.address) as triton:
            busy = asyncio.ensure_future(keep_model_busy(running.address, 2))
            await asyncio.sleep(0.3)  # one long call on the model, the other queued or retrying
            starts = await asyncio.gather(
                *(
                    triton.infer(MODEL, [frames_input(frames[:1])], sequence_id=i, sequence_start=True)
                    for i in range(1, 9)
                ),
                return_exceptions=True,
            )
            await busy
            outcomes: list[BaseException | None] = []
            for sequence_id, start in enumerate(starts, 1):
                refused = start if isinstance(start, BaseException) else None
                outcomes.append(refused)
                end = triton.infer(
                    MODEL, [frames_input(frames[1:])], sequence_id=sequence_id, sequence_end=True
                )
                if refused is None:
                    await end
                    continue
                with pytest.raises(InferenceServerException, match="START flag"):
                    await end  # the refused START left no sequence
        return outcomes

    with serving(model, max_queued_jobs=1) as running:
        outcomes = asyncio.run(scenario(running))
        assert running.live_envs == 0
    refused = [o for o in outcomes if o is not None]
    assert refused, "the queue never filled: nothing was tested"
    assert {str(e.status()) for e in refused} == {"StatusCode.RESOURCE_EXHAUSTED"}  # type: ignore[attr-defined]


def test_an_idle_sequence_expires_and_frees_its_state(model: InferenceModel) -> None:
    with (
        serving(model, sequence_idle_timeout_s=0.5) as running,
        tg.InferenceServerClient(running.address) as t,
    ):
        step(t, 1, FRAME, start=True)
        assert running.live_envs == 1
        assert running.running.metrics.registry.get_sample_value("vidlstm_live_sequences") == 1
        deadline = time.monotonic() + 10
        while running.live_envs and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running.live_envs == 0
        assert running.running.metrics.registry.get_sample_value("vidlstm_live_sequences") == 0
        with pytest.raises(InferenceServerException, match=r"idle for more than 0\.5 s"):
            step(t, 1, FRAME)


def test_during_drain_server_ready_is_false_and_new_calls_are_refused(model: InferenceModel) -> None:
    with serving(model) as running, tg.InferenceServerClient(running.address) as t:
        step(t, 1, FRAME, start=True)
        running.loop.call_soon_threadsafe(running.running.drain.close)
        time.sleep(0.2)
        assert t.is_server_live()
        assert not t.is_server_ready()
        assert not t.is_model_ready(MODEL)  # open like ServerReady: KServe probes it
        with pytest.raises(InferenceServerException, match="shutting down") as refused:
            step(t, 1, FRAME)
        assert refused.value.status() == "StatusCode.UNAVAILABLE"


def test_a_stream_carries_on_while_the_server_drains(model: InferenceModel) -> None:
    """An open ModelStreamInfer is a call in flight: it keeps being answered during the grace period."""
    frames = random_frames(np.random.default_rng(24), 3)

    async def scenario(running: ServerThread) -> list[np.ndarray]:
        requests: asyncio.Queue[dict[str, object] | None] = asyncio.Queue()

        async def feed():  # type: ignore[no-untyped-def]
            while (request := await requests.get()) is not None:
                yield request

        out = []
        async with tga.InferenceServerClient(running.address) as triton:
            responses = triton.stream_infer(feed()).__aiter__()
            for t, frame in enumerate(frames):
                if t == 1:
                    running.loop.call_soon_threadsafe(running.running.drain.close)
                await requests.put(
                    {
                        "model_name": MODEL,
                        "inputs": [frames_input(frame[None])],
                        "sequence_id": 9,
                        "sequence_start": t == 0,
                        "sequence_end": t == 2,
                    }
                )
                result, error = await anext(responses)
                assert error is None, error
                out.append(result.as_numpy(OUTPUT)[0])
            await requests.put(None)
        return out

    with serving(model) as running:
        got = asyncio.run(scenario(running))
    np.testing.assert_allclose(got, reference_embeddings(model, frames), atol=ATOL, rtol=0)
