"""TLS, mutual TLS, bearer tokens, per-client limits and the default deadline, over real channels."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from conftest import ServerThread, serving
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import CertificateAuthority, Identity

from vidlstm.clients import (
    EncoderClient,
    ServerBusyError,
    ServerUnavailableError,
    Tls,
    UnauthenticatedError,
)
from vidlstm.models import InferenceModel
from vidlstm.service import ServerSettings, create_server
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc

FRAME = np.zeros((84, 84, 1), np.uint8)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority(folder, "ca"), CertificateAuthority(folder, "other-ca")
    return {
        "ca": ca.identity,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "stranger": other.issue("stranger", server=False),
    }


@pytest.fixture(scope="module")
def tls_server(model: InferenceModel, pki: dict[str, Identity]) -> Iterator[ServerThread]:
    with serving(model, tls_cert=pki["server"].cert, tls_key=pki["server"].key) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(model: InferenceModel, pki: dict[str, Identity]) -> Iterator[ServerThread]:
    with serving(
        model, tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_client_ca=pki["ca"].cert
    ) as running:
        yield running


@pytest.fixture(scope="module")
def auth_server(model: InferenceModel) -> Iterator[ServerThread]:
    with serving(model, auth_tokens=("alpha-token", "beta-token"), max_streams_per_client=2) as running:
        yield running


def test_tls_serves_and_refuses_plaintext(tls_server: ServerThread, pki: dict[str, Identity]) -> None:
    with EncoderClient(tls_server.address, tls=Tls(ca=pki["ca"].cert)) as client:
        assert client.encode(FRAME[None], pixel_format="GRAY").embeddings.shape == (1, 256)
    with (
        EncoderClient(tls_server.address, timeout=3, retry=None) as plaintext,
        pytest.raises(ServerUnavailableError),
    ):
        plaintext.info()


def test_tls_client_refuses_a_server_from_another_ca(
    tls_server: ServerThread, pki: dict[str, Identity]
) -> None:
    with (
        EncoderClient(tls_server.address, tls=Tls(ca=pki["stranger"].cert), timeout=3, retry=None) as client,
        pytest.raises(ServerUnavailableError),
    ):
        client.info()


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    mtls_server: ServerThread, pki: dict[str, Identity]
) -> None:
    ca = pki["ca"].cert
    trusted = Tls(ca=ca, cert=pki["client"].cert, key=pki["client"].key)
    with EncoderClient(mtls_server.address, tls=trusted) as client:
        assert client.info().embedding_size == 256
    for tls in (Tls(ca=ca), Tls(ca=ca, cert=pki["stranger"].cert, key=pki["stranger"].key)):
        with (
            EncoderClient(mtls_server.address, tls=tls, timeout=3, retry=None) as client,
            pytest.raises(ServerUnavailableError),
        ):
            client.info()


def test_bearer_tokens_guard_every_rpc_but_health(auth_server: ServerThread) -> None:
    for token in (None, "wrong", "alpha-token-but-longer"):
        with EncoderClient(auth_server.address, token=token) as client:
            with pytest.raises(UnauthenticatedError, match="bearer token"):
                client.info()
            with pytest.raises(UnauthenticatedError):
                client.encode(FRAME[None], pixel_format="GRAY")
            with client.session(pixel_format="GRAY") as session, pytest.raises(UnauthenticatedError):
                session.step(FRAME)
            with pytest.raises(UnauthenticatedError):
                list(client.encode_video("clip.mp4", server_path=True))
    for token in ("alpha-token", "beta-token"):
        with EncoderClient(auth_server.address, token=token) as client:
            assert client.encode(FRAME[None], pixel_format="GRAY").embeddings.shape == (1, 256)
    with grpc.insecure_channel(auth_server.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_streams_per_client_are_limited(auth_server: ServerThread) -> None:
    with (
        EncoderClient(auth_server.address, token="alpha-token") as alpha,
        EncoderClient(auth_server.address, token="beta-token") as beta,
        alpha.session(pixel_format="GRAY") as one,
        alpha.session(pixel_format="GRAY") as two,
    ):
        one.step(FRAME)
        two.step(FRAME)
        with (
            alpha.session(pixel_format="GRAY") as three,
            pytest.raises(ServerBusyError, match="the limit per client is 2"),
        ):
            three.step(FRAME)
        with beta.session(pixel_format="GRAY") as other:  # another client is not affected
            assert other.step(FRAME).shape == (256,)


def test_calls_without_a_deadline_get_the_servers_default(model: InferenceModel) -> None:
    with serving(model, default_deadline_s=0.05) as running:
        frames = pb.Frames(
            raw=pb.RawFrames(shape=[2000, 84, 84, 1], pixel_format=pb.GRAY, data=bytes(2000 * 84 * 84))
        )
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.EncoderStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Encode(pb.EncodeRequest(sequences=[pb.Sequence(frames=frames)]))  # no deadline
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "server's default of 0.05 s" in raised.value.details()
            small = pb.Frames(
                raw=pb.RawFrames(shape=[1, 84, 84, 1], pixel_format=pb.GRAY, data=bytes(84 * 84))
            )
            assert stub.Encode(pb.EncodeRequest(sequences=[pb.Sequence(frames=small)]), timeout=10).results


def test_half_a_tls_configuration_is_refused(pki: dict[str, Identity], model: InferenceModel) -> None:
    settings = ServerSettings(port=0, tls_cert=pki["server"].cert)
    with pytest.raises(ValueError, match="needs both --tls-cert and --tls-key"):
        asyncio.run(create_server(settings, model))  # refused before a port is bound: nothing to stop


def test_without_tokens_streams_are_limited_per_peer_address(model: InferenceModel) -> None:
    """No auth: every connection from one address counts as one client."""
    with (
        serving(model, max_streams_per_client=2) as running,
        EncoderClient(running.address) as first,
        EncoderClient(running.address) as second,  # another connection, the same address
        first.session(pixel_format="GRAY") as one,
        second.session(pixel_format="GRAY") as two,
    ):
        one.step(FRAME)
        two.step(FRAME)
        with (
            first.session(pixel_format="GRAY") as three,
            pytest.raises(ServerBusyError, match="this client has 2 streams open, the limit per client is 2"),
        ):
            three.step(FRAME)


def test_health_command_over_tls(tls_server: ServerThread, pki: dict[str, Identity]) -> None:
    """`vidlstm health --tls-ca`: the probe a TLS deployment uses instead of Kubernetes' plaintext one."""
    command = [sys.executable, "-m", "vidlstm", "health", "--server", tls_server.address]
    served = subprocess.run([*command, "--tls-ca", str(pki["ca"].cert)], capture_output=True, text=True)
    assert (served.returncode, served.stdout.strip()) == (0, "SERVING"), served.stderr
    plaintext = subprocess.run([*command, "--timeout", "3"], capture_output=True, text=True)
    assert plaintext.returncode == 1
