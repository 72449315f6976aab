"""Live weights in real `vidlstm serve` processes: a watched file replaced by a learner, and the
`vidlstm push-weights` command, with the version in GetModelInfo, the metrics and the logs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOKEN, VIDLSTM, ServeProcess

from vidlstm.models import InferenceModel, ModelSpec, build_model, save_checkpoint

SHAPE = (84, 84, 1)
ADMIN = "process-admin-token"


@contextlib.contextmanager
def serve(*flags: str) -> Iterator[ServeProcess]:
    """`vidlstm serve` with `flags`, stopped with SIGTERM (its logs complete) and closed."""
    server = ServeProcess(*flags)
    try:
        yield server
    finally:
        server.stop()
        server.close()


def _reference(seed: int) -> InferenceModel:
    return InferenceModel(build_model(ModelSpec(seed=seed)), torch.device("cpu"))


def _learner_checkpoint(path: Path, seed: int, step: int) -> Path:
    """What a learner does: save beside, rename over (save_checkpoint is atomic)."""
    return save_checkpoint(build_model(ModelSpec(name="learner", seed=seed)), path, learner_step=step)


def _wait_for_version(server: ServeProcess, version: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while client.info().weights.version != version:
            assert time.monotonic() < deadline, f"version {version} not served after {timeout} s"
            time.sleep(0.1)


def _served(server: ServeProcess, frames: np.ndarray) -> tuple[np.ndarray, int]:
    with server.client() as client:
        result = client.encode(frames, pixel_format="GRAY")
    return result.embeddings, result.weights.number


def _expected(model: InferenceModel, frames: np.ndarray) -> np.ndarray:
    return model.encode(np.moveaxis(frames, -1, 1)[:, None])[0][:, 0]


def _log_records(server: ServeProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.lines if line.startswith("{")]


def test_a_replaced_watched_file_serves_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    watched = tmp_path / "latest.safetensors"
    frames = np.random.default_rng(0).integers(0, 256, (3, *SHAPE), np.uint8)
    with serve("--watch-weights", str(watched)) as server:
        _wait_for_version(server, 1)
        _learner_checkpoint(watched, seed=21, step=300)
        _wait_for_version(server, 2)
        with server.client() as client:
            info = client.info()
        assert (info.weights.weights_hash, info.weights.learner_step) == (_reference(21).weights_hash, 300)
        embeddings, version = _served(server, frames)
        assert version == 2
        np.testing.assert_allclose(embeddings, _expected(_reference(21), frames), atol=1e-4)
        damaged = tmp_path / "damaged.tmp"
        damaged.write_bytes(watched.read_bytes()[:1000])
        os.replace(damaged, watched)
        deadline = time.monotonic() + 30
        while server.metric("vidlstm_weight_install_failures_total") < 1:
            assert time.monotonic() < deadline, "the damaged file was never refused"
            time.sleep(0.1)
        embeddings, version = _served(server, frames)  # the old weights keep serving
        assert version == 2
        np.testing.assert_allclose(embeddings, _expected(_reference(21), frames), atol=1e-4)
        assert server.metric("vidlstm_weights_version") == 2
        assert server.metric("vidlstm_weight_installs_total") == 1
    messages = [str(r.get("message", "")) for r in _log_records(server)]
    assert any("weights version 2 serving" in m and "learner step 300" in m for m in messages), messages
    assert any("refused, version 2 keeps serving" in m for m in messages), messages


def test_a_watched_file_at_start_is_installed_unless_it_is_the_served_model(tmp_path: Path) -> None:
    checkpoint = _learner_checkpoint(tmp_path / "model.safetensors", seed=22, step=5)
    other = _learner_checkpoint(tmp_path / "latest.safetensors", seed=23, step=6)
    with serve("--model", str(checkpoint), "--watch-weights", str(checkpoint)) as same:
        time.sleep(1)  # several polls of the watcher
        with same.client() as client:
            weights = client.info().weights
        assert (weights.version, weights.learner_step) == (1, 5)  # the --model file's own step
    with serve("--model", str(checkpoint), "--watch-weights", str(other)) as fresh:
        _wait_for_version(fresh, 2)
        frames = np.random.default_rng(1).integers(0, 256, (2, *SHAPE), np.uint8)
        embeddings, _ = _served(fresh, frames)
        np.testing.assert_allclose(embeddings, _expected(_reference(23), frames), atol=1e-4)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [*VIDLSTM, *args], capture_output=True, text=True, timeout=120, check=False, env=environment
    )


@pytest.fixture
def admin_tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-tokens"
    path.write_text(f"# learners\n{ADMIN}\n")
    return path


def test_push_weights_command_installs_and_info_shows_the_version(
    tmp_path: Path, admin_tokens_file: Path
) -> None:
    weights = _learner_checkpoint(tmp_path / "step-900.safetensors", seed=24, step=1)
    with serve("--admin-tokens-file", str(admin_tokens_file)) as server:
        address = ["--server", server.address]
        missing = _cli("push-weights", str(tmp_path / "missing.safetensors"), *address)
        assert missing.returncode == 2  # a usage error, found before any call
        assert "is not a file" in missing.stderr
        assert "$VIDLSTM_ADMIN_TOKEN" in _cli("push-weights", "--help").stdout
        refused = _cli("push-weights", str(weights), *address, "--token", TOKEN)
        assert refused.returncode == 1
        assert "PERMISSION_DENIED" in refused.stderr
        admin = {"VIDLSTM_ADMIN_TOKEN": ADMIN}  # push-weights' --token default
        pushed = _cli("push-weights", str(weights), *address, "--learner-step", "900", env=admin)
        assert pushed.returncode == 0, pushed.stderr
        assert "serving version 2 (weights sha256:" in pushed.stdout
        assert ", learner step 900), installed" in pushed.stdout
        info = _cli("info", *address, "--token", TOKEN)
        assert f"weights        sha256:{_reference(24).weights_hash}" in info.stdout
        assert "version        2, learner step 900" in info.stdout
        assert server.metric("vidlstm_weights_version") == 2
        frames = np.random.default_rng(2).integers(0, 256, (2, *SHAPE), np.uint8)
        embeddings, version = _served(server, frames)
        assert version == 2
        np.testing.assert_allclose(embeddings, _expected(_reference(24), frames), atol=1e-4)
