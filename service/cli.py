"""`vidlstm serve`: settings from flags, built once, then the server runs until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
from pathlib import Path

from .server import serve
from .settings import ServerSettings

__all__ = ["build_parser", "serve_main"]

TOKENS_ENV = "VIDLSTM_AUTH_TOKENS"

_HELP = {
    "host": "address to listen on (0.0.0.0 for all interfaces)",
    "port": "port to listen on (0 picks a free one)",
    "model": "checkpoint: a .safetensors with its spec, a folder with spec + weights, or a .pt with --spec",
    "spec": "model spec (JSON/YAML); alone, serves that architecture with seeded weights",
    "device": "auto (CUDA when present), cpu, cuda, cuda:1, ...",
    "threads": "torch intra-op threads (default: one per core)",
    "max_message_bytes": "largest request or response message",
    "max_batch_size": "most frames in one model call",
    "max_queue_delay_ms": "how long a batch may wait for more frames once the model is free",
    "max_queued_jobs": "requests waiting for the model before new ones get RESOURCE_EXHAUSTED",
    "max_streams": "open EncodeStream calls at once",
    "max_envs_per_stream": "envs one stream may hold state for",
    "state_capacity": "envs the state pool holds in all (preallocated on the device)",
    "stream_idle_timeout_s": "a stream that sends nothing this long is closed, its state dropped",
    "max_frames_per_call": "frames in one request",
    "max_frame_side": "largest frame height or width",
    "max_image_pixels": "largest JPEG/PNG (width x height), checked before decoding",
    "video_root": "folder EncodeVideo may read files from (by relative path); unset: uploads only",
    "max_video_bytes": "largest video upload",
    "video_chunk_frames": "frames per EncodeVideo response",
    "decoder": "video decoder: pyav (default, exact timestamps) or opencv",
    "decoder_threads": "decoder threads per video (0: FFmpeg picks)",
    "max_streams_per_client": "open streams per client (per bearer token, else per peer address)",
    "default_deadline_s": "deadline for unary calls that set none",
    "tls_cert": "PEM certificate chain: serve TLS",
    "tls_key": "PEM private key for --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "grace_period_s": "on SIGTERM, how long running calls may finish",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidlstm serve", description="Serve CNN+LSTM embeddings over gRPC.")
    defaults = ServerSettings()
    parser.add_argument(
        "--auth-tokens-file",
        type=Path,
        help=f"bearer tokens, one per line, that calls must send (also ${TOKENS_ENV}, comma-separated)",
    )
    for field in dataclasses.fields(ServerSettings):
        if field.name == "auth_tokens":
            continue
        default = getattr(defaults, field.name)
        kind = {int: int, float: float}.get(type(default), str)
        if field.name in ("model", "spec", "video_root", "tls_cert", "tls_key", "tls_client_ca"):
            kind = Path
        elif field.name == "threads":
            kind = int
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=kind,
            default=default,
            help=f"{_HELP[field.name]} (default: {default})",
        )
    return parser


def serve_main(argv: list[str]) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        tokens = _auth_tokens(args.pop("auth_tokens_file"))
        settings = ServerSettings(**args, auth_tokens=tokens)
    except (ValueError, OSError) as error:
        raise SystemExit(f"vidlstm serve: {error}") from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))
    return 0


def _auth_tokens(path: Path | None) -> tuple[str, ...]:
    """Tokens from the file (one per line, # comments) and from the environment variable."""
    lines = path.read_text().splitlines() if path is not None else []
    lines += os.environ.get(TOKENS_ENV, "").split(",")
    return tuple(t for t in (line.strip() for line in lines) if t and not t.startswith("#"))
