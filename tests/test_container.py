"""The server image, run for real by a container engine (`make container-test` builds it and sets
VIDLSTM_IMAGE; without it these tests are skipped)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, random_frames, reference_embeddings, wait_until_serving

from vidlstm.clients import EncoderClient
from vidlstm.models import CoreSpec, InferenceModel, ModelSpec, build_model, save_checkpoint

IMAGE = os.environ.get("VIDLSTM_IMAGE")
ENGINE = os.environ.get("VIDLSTM_CONTAINER_ENGINE", "podman")
pytestmark = pytest.mark.skipif(IMAGE is None, reason="set VIDLSTM_IMAGE (make container-test does)")


class Container:
    """One detached container of the image, its gRPC port published on a free localhost port."""

    def __init__(self, *run_args: str, init: bool = True) -> None:
        self.name = f"vidlstm-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        init_args = ["--init"] if init else []
        publish = ["-p", f"{self.address}:50051"]
        _engine("run", "-d", *init_args, "--name", self.name, *publish, *run_args, str(IMAGE))

    def wait_until_serving(self) -> None:
        try:
            wait_until_serving(self.address, lambda: self.state("{{.State.Running}}") == "true")
        except AssertionError as error:
            raise AssertionError(f"{error}; container logs:\n{self.logs()}") from None

    def stop(self) -> int:
        """SIGTERM (what `docker stop` and Kubernetes send), then the exit code."""
        _engine("stop", "--time", "60", self.name)
        return int(self.state("{{.State.ExitCode}}"))

    def state(self, template: str) -> str:
        return _engine("inspect", "--format", template, self.name).strip()

    def logs(self) -> str:
        result = subprocess.run([ENGINE, "logs", self.name], capture_output=True, text=True, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        subprocess.run([ENGINE, "rm", "-f", self.name], capture_output=True, check=False)


def _engine(*args: str) -> str:
    result = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, f"{ENGINE} {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def test_image_serves_the_default_model_and_exits_0_on_sigterm(
    containers: list[Container], model: InferenceModel, rng
) -> None:
    container = Container()
    containers.append(container)
    container.wait_until_serving()
    frames = random_frames(rng, 6)
    with EncoderClient(container.address, timeout=60) as client:
        assert client.info().weights_hash == model.weights_hash
        embeddings = client.encode(frames, pixel_format="GRAY").embeddings
    np.testing.assert_allclose(embeddings, reference_embeddings(model, frames), atol=1e-5)
    assert container.state("{{.Config.User}}") == "10001:10001"
    assert container.stop() == 0
    logs = container.logs()
    assert "draining calls" in logs
    assert logs.rstrip().endswith("stopped")


def test_mounted_model_folder_is_served_by_setting_one_variable(
    containers: list[Container], tmp_path: Path, rng
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    folder.chmod(0o755)
    theirs = build_model(ModelSpec(name="mounted", core=CoreSpec(hidden_size=48), seed=3))
    save_checkpoint(theirs, folder / "agent.safetensors").chmod(0o644)
    # No --init: the server runs as PID 1 and must still stop cleanly on SIGTERM (it installs a handler).
    container = Container(
        "-v", f"{folder}:/models:ro", "-e", "VIDLSTM_MODEL=/models/agent.safetensors", init=False
    )
    containers.append(container)
    container.wait_until_serving()
    frames = random_frames(rng, 4)
    mounted = InferenceModel(theirs, __import__("torch").device("cpu"))
    with EncoderClient(container.address, timeout=60) as client:
        info = client.info()
        assert (info.name, info.embedding_size) == ("mounted", 48)
        embeddings = client.encode(frames, pixel_format="GRAY").embeddings
    np.testing.assert_allclose(embeddings, reference_embeddings(mounted, frames), atol=1e-5)
    assert container.stop() == 0
