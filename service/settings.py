"""Server settings: built once in the entry point, then passed down (nothing reads globals)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["ServerSettings"]

MiB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    model: Path | None = None  # checkpoint; None serves the seeded default model
    spec: Path | None = None  # spec file for weights that carry none
    device: str = "auto"
    threads: int | None = None
    max_message_bytes: int = 64 * MiB
    max_batch_size: int = 256
    max_queue_delay_ms: float = 0.0
    max_queued_jobs: int = 4096
    max_streams: int = 1024
    max_streams_per_client: int = 256  # per bearer token, or per peer address without auth
    max_envs_per_stream: int = 1024
    state_capacity: int = 16384
    stream_idle_timeout_s: float = 300.0
    max_frames_per_call: int = 4096
    max_frame_side: int = 4096
    max_image_pixels: int = 16_000_000
    video_root: Path | None = None  # EncodeVideo may read files under it; None: uploads only
    max_video_bytes: int = 2 << 30
    video_chunk_frames: int = 128
    decoder: str = "pyav"
    decoder_threads: int = 0  # 0: FFmpeg picks
    default_deadline_s: float = 120.0  # for unary calls that set no deadline
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: mutual TLS, client certificates required
    auth_tokens: tuple[str, ...] = ()  # from --auth-tokens-file or VIDLSTM_AUTH_TOKENS; never logged
    grace_period_s: float = 10.0
    log_level: str = "INFO"

    def __repr__(self) -> str:  # settings get logged: keep the tokens out
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "auth_tokens"}
        return f"ServerSettings({shown}, auth_tokens=<{len(self.auth_tokens)} hidden>)"

    def __post_init__(self) -> None:
        positive = (
            "max_message_bytes",
            "max_batch_size",
            "max_queued_jobs",
            "max_streams",
            "max_streams_per_client",
            "default_deadline_s",
            "max_envs_per_stream",
            "state_capacity",
            "stream_idle_timeout_s",
            "max_frames_per_call",
            "max_frame_side",
            "max_image_pixels",
            "max_video_bytes",
            "video_chunk_frames",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_queue_delay_ms < 0 or self.grace_period_s < 0:
            raise ValueError("max_queue_delay_ms and grace_period_s must be >= 0")
