"""The `vidlstm` command, run as a user would: real processes, real server, real files."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import ServerThread, free_port, random_frames, reference_embeddings, wait_until_serving
from PIL import Image

from vidlstm.clients import EncoderClient
from vidlstm.models import InferenceModel, PixelFormat

VIDLSTM = [sys.executable, "-m", "vidlstm"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIDLSTM, *args], capture_output=True, text=True, timeout=120, check=False)


def test_info_prints_the_model(server: ServerThread, model: InferenceModel) -> None:
    result = _run("info", "--server", server.address)
    assert result.returncode == 0, result.stderr
    assert "embedding      256 float32" in result.stdout
    assert model.weights_hash in result.stdout


def test_info_on_a_dead_server_fails_with_a_message() -> None:
    port = free_port()
    result = _run("info", "--server", f"127.0.0.1:{port}", "--timeout", "2")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr or "DEADLINE_EXCEEDED" in result.stderr


def test_health_exits_0_only_while_serving(server: ServerThread) -> None:
    serving = _run("health", "--server", server.address)
    assert (serving.returncode, serving.stdout.strip()) == (0, "SERVING")
    unknown = _run("health", "--server", server.address, "--service", "no.such.Service")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr
    dead = _run("health", "--server", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert dead.returncode == 1
    assert "UNAVAILABLE" in dead.stderr or "DEADLINE_EXCEEDED" in dead.stderr


def test_encode_images_writes_embeddings(
    server: ServerThread, model: InferenceModel, tmp_path: Path, rng
) -> None:
    frames = random_frames(rng, 3, 64, 80, 3)
    paths = []
    for index, frame in enumerate(frames):
        paths.append(tmp_path / f"frame{index}.png")
        Image.fromarray(frame).save(paths[-1])
    out = tmp_path / "embeddings.npz"
    result = _run("encode-images", *map(str, paths), "--out", str(out), "--server", server.address)
    assert result.returncode == 0, result.stderr
    with np.load(out) as saved:
        np.testing.assert_allclose(
            saved["embeddings"], reference_embeddings(model, frames, PixelFormat.RGB), atol=1e-5, rtol=0
        )
        assert str(saved["weights_hash"]) == model.weights_hash
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".npz") == ["embeddings.npz"]


def test_encode_images_with_a_corrupt_file_writes_nothing(server: ServerThread, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out.npz"
    result = _run("encode-images", str(bad), "--out", str(out), "--server", server.address)
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "corrupt" in result.stderr
    assert not out.exists()


def test_unknown_command_lists_the_commands() -> None:
    result = _run("frobnicate")
    assert result.returncode == 2
    assert "serve" in result.stderr
    assert "encode-images" in result.stderr


def test_serve_starts_answers_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [*VIDLSTM, "serve", "--port", str(port), "--threads", "1", "--metrics-port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until_serving(f"127.0.0.1:{port}", lambda: process.poll() is None)
        with EncoderClient(f"127.0.0.1:{port}", timeout=5) as client:
            info = client.info()
            assert info.embedding_size == 256
            frame = np.asarray(Image.open(io.BytesIO(_png())).convert("L"))[None]
            assert client.encode(frame, pixel_format="GRAY").embeddings.shape == (1, 256)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "serving model 'default'" in output
    assert f"listening on 127.0.0.1:{port}" in output
    assert "stopped" in output


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (84, 84), 77).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_client_options_are_usage_errors(tmp_path: Path) -> None:
    """Half a TLS configuration, a missing PEM file or a timeout that is not positive: exit 2 with a
    message, never a traceback."""
    cert = tmp_path / "client.pem"
    cert.write_text("not a certificate")
    for args, message in [
        (["--tls-cert", str(cert)], "TLS options: a client certificate needs both cert and key"),
        (["--tls-ca", str(tmp_path / "missing.pem")], "TLS options: [Errno 2] No such file or directory"),
        (["--timeout", "-1"], "--timeout: must be a positive number of seconds, got '-1'"),
    ]:
        for command in ("health", "info"):
            result = _run(command, "--server", "127.0.0.1:1", *args)
            assert result.returncode == 2, (command, args, result.stderr)
            assert message in result.stderr
            assert "Traceback" not in result.stderr
