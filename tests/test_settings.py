"""`vidlstm serve` settings: flags over VIDLSTM_* environment over config file over defaults,
validated, with secrets kept out of what gets printed."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vidlstm.service import ServerSettings
from vidlstm.service.cli import load_settings


def test_flags_beat_environment_beat_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "vidlstm.yaml"
    config.write_text("port: 7000\nmax-batch-size: 32\ndecoder: opencv\nlog_format: json\n")
    monkeypatch.setenv("VIDLSTM_CONFIG", str(config))
    monkeypatch.setenv("VIDLSTM_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("VIDLSTM_DECODER", "pyav")
    settings = load_settings(["--decoder", "opencv", "--metrics-port", "none"])
    assert settings.port == 7000  # only in the file
    assert settings.max_batch_size == 64  # env over file
    assert settings.decoder == "opencv"  # flag over env
    assert settings.log_format == "json"
    assert settings.metrics_port is None
    assert settings.grace_period_s == ServerSettings.model_fields["grace_period_s"].default


def test_toml_config_file(tmp_path: Path) -> None:
    config = tmp_path / "vidlstm.toml"
    config.write_text('host = "0.0.0.0"\nstate_capacity = 128\n')
    settings = load_settings(["--config", str(config)])
    assert (settings.host, settings.state_capacity) == ("0.0.0.0", 128)


def test_tokens_come_from_env_and_file_and_are_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# team tokens\nsecret-file\n\n")
    monkeypatch.setenv("VIDLSTM_AUTH_TOKENS", "secret-1, secret-2")
    settings = load_settings(["--auth-tokens-file", str(tokens)])
    assert settings.auth_tokens == ("secret-1", "secret-2", "secret-file")
    assert "secret" not in repr(settings)
    assert "--auth-tokens" not in [a.split("=")[0] for a in _serve_help().split()]


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        ({"VIDLSTM_PORT": "http"}, [], "port: Input should be a valid integer"),
        ({}, ["--max-batch-size", "0"], "max_batch_size: Input should be greater than 0"),
        ({}, ["--decoder", "ffmpeg"], "decoder: Input should be 'pyav' or 'opencv' (got 'ffmpeg')"),
        ({"VIDLSTM_LOG_FORMAT": "xml"}, [], "log_format: Input should be 'text' or 'json'"),
        ({}, ["--config", "/nonexistent/vidlstm.yaml"], "No such file or directory"),
        ({}, ["--port", "0", "--model", "/nonexistent/agent.safetensors"], "model /nonexistent/agent.sa"),
        ({}, ["--video-root", "/nonexistent"], "video_root: Path does not point to a directory"),
        ({}, ["--video-root", "/etc/hostname"], "video_root: Path does not point to a directory"),
        ({}, ["--stream-idle-timeout-s", "inf"], "stream_idle_timeout_s: Input should be a finite number"),
        ({}, ["--grace-period-s", "nan"], "grace_period_s: Input should be a finite number"),
        ({}, ["--decoder-threads", "100000"], "decoder_threads: Input should be less than or equal to 64"),
        (
            {},
            ["--port", "0", "--device", "nonsense"],
            "unknown device 'nonsense'; use auto, cpu, cuda or cuda:N",
        ),
        (
            {},
            ["--port", "0", "--metrics-port", "none", "--max-message-bytes", "12000"],
            "--video-chunk-frames 128: responses would be larger than --max-message-bytes 12000; "
            "use --video-chunk-frames <= 10",
        ),
    ],
)
def test_bad_settings_stop_the_server_with_a_clear_message(
    env: dict[str, str], argv: list[str], expected: str
) -> None:
    result = _serve(*argv, env=env)
    assert result.returncode == 1
    assert "vidlstm serve:" in result.stderr
    assert expected in result.stderr


def test_a_metrics_port_in_use_stops_the_server_with_a_clear_message() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve("--port", "0", "--metrics-port", str(port))
    assert result.returncode == 1
    assert f"vidlstm serve: could not serve metrics on 127.0.0.1:{port}" in result.stderr


def test_unknown_setting_in_a_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "vidlstm.yaml"
    config.write_text("max_batch: 32\n")
    with pytest.raises(SystemExit, match="max_batch: Extra inputs are not permitted"):
        load_settings(["--config", str(config)])


def _serve_help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "vidlstm", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout


def _serve(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`vidlstm serve` in a clean environment (no VIDLSTM_* from the caller's)."""
    return subprocess.run(
        [sys.executable, "-m", "vidlstm", "serve", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )
