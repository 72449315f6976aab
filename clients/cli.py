"""Client commands: `vidlstm info`, `vidlstm health` and `vidlstm encode-images` (the light client's
dependencies only: grpcio, grpcio-health-checking, protobuf, numpy)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .channel import Tls
from .client import EncoderClient
from .errors import VidlstmError

__all__ = [
    "add_connection_args",
    "client_from_args",
    "encode_images_main",
    "health_main",
    "info_main",
    "push_weights_main",
]


TOKEN_ENV = "VIDLSTM_TOKEN"
ADMIN_TOKEN_ENV = "VIDLSTM_ADMIN_TOKEN"


def add_connection_args(
    parser: argparse._ActionsContainer,
    default_server: str | None = "localhost:50051",
    token_env: str = TOKEN_ENV,
) -> None:
    """--server, --timeout and the credentials options every client command shares; --token
    defaults to the environment variable `token_env`."""
    parser.add_argument("--server", default=default_server, help=f"HOST:PORT (default: {default_server})")
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=60.0, help="seconds per call (default: 60)"
    )
    parser.add_argument("--tls-ca", type=Path, help="PEM CA to verify the server: connect with TLS")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    parser.add_argument(
        "--token", default=os.environ.get(token_env), help=f"bearer token (default: ${token_env})"
    )


def client_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> EncoderClient:
    """The client the options describe; half a TLS configuration or an unreadable PEM file is a usage
    error (exit 2), as on the server."""
    tls = Tls(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca or args.tls_cert else None
    try:
        return EncoderClient(args.server, timeout=args.timeout, tls=tls, token=args.token)
    except (ValueError, OSError) as error:
        parser.error(f"TLS options: {error}")


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _server_parser(prog: str, description: str, token_env: str = TOKEN_ENV) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_connection_args(parser, token_env=token_env)
    return parser


def info_main(argv: list[str]) -> int:
    parser = _server_parser("vidlstm info", "Describe the model a server serves.")
    parser.add_argument("--json", action="store_true", help="print the full info as JSON")
    parser.add_argument(
        "--models",
        action="store_true",
        help="instead, list the encoders and pretrained weights this install can build (no server)",
    )
    args = parser.parse_args(argv)
    if args.models:
        return _print_models(parser)
    try:
        with client_from_args(args, parser) as client:
            info = client.info()
    except VidlstmError as error:
        parser.exit(1, f"vidlstm info: {error}\n")
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(info), indent=2))
        return 0
    state = ", ".join(f"{s.name} {list(s.shape)}" for s in info.state)
    print(f"model          {info.name}")
    print(f"encoder        {json.loads(info.spec_json)['encoder']['name']}")
    print(
        f"input          {info.input_height}x{info.input_width}, {info.input_channels} channel(s), "
        f"stack {info.frame_stack}"
    )
    print(f"embedding      {info.embedding_size} float32")
    print(f"state          {state}")
    print(f"weights        sha256:{info.weights_hash}")
    step = f", learner step {info.weights.learner_step}" if info.weights.HasField("learner_step") else ""
    print(f"version        {info.weights.version}{step} (lineage sha256:{info.lineage[:12]})")
    print(f"device         {info.device}")
    return 0


def push_weights_main(argv: list[str]) -> int:
    parser = _server_parser(
        "vidlstm push-weights",
        "Install new weights (a .safetensors file of the served architecture) on a running server; "
        "pushing needs an admin token (or admin certificate).",
        token_env=ADMIN_TOKEN_ENV,
    )
    parser.add_argument("weights", type=Path, help=".safetensors file (vidlstm's save_checkpoint writes one)")
    parser.add_argument("--learner-step", type=int, help="the training step these weights come from")
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        parser.error(f"{args.weights} is not a file: name the .safetensors file to push")
    try:
        with client_from_args(args, parser) as client:
            result = client.push_weights(args.weights, learner_step=args.learner_step)
    except (OSError, VidlstmError) as error:
        parser.exit(1, f"vidlstm push-weights: {error}\n")
    weights = result.weights
    step = "" if weights.learner_step is None else f", learner step {weights.learner_step}"
    print(
        f"serving version {weights.number} (weights sha256:{weights.weights_hash[:12]}{step}), "
        f"installed {result.install_ms:.1f} ms after the upload"
    )
    return 0


def _print_models(parser: argparse.ArgumentParser) -> int:
    """The catalogue needs torch (the encoder registry): the light client says how to get it."""
    try:
        from vidlstm.tools.models_cli import catalogue_text
    except ImportError as error:
        hint = "pip install 'vidlstm[server]'"
        parser.exit(1, f"vidlstm info --models needs the server extra (torch): {hint} ({error})\n")
    print(catalogue_text())
    return 0


def health_main(argv: list[str]) -> int:
    """Exit 0 only while the server's gRPC health service reports SERVING: a container HEALTHCHECK
    or a script waiting for a server (the health service needs no token)."""
    parser = _server_parser("vidlstm health", "Check a server's gRPC health service; exit 0 if SERVING.")
    parser.set_defaults(timeout=5.0)
    parser.add_argument("--service", default="vidlstm.v1.Encoder", help="service to ask about ('' = server)")
    args = parser.parse_args(argv)
    with client_from_args(args, parser) as client:
        try:
            reply = health_pb2_grpc.HealthStub(client.channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            parser.exit(1, f"vidlstm health: {args.server}: {error.code().name}: {error.details()}\n")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def encode_images_main(argv: list[str]) -> int:
    parser = _server_parser(
        "vidlstm encode-images", "Embed JPEG/PNG files, in the given order, as one frame sequence."
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files, in time order")
    parser.add_argument("--out", type=Path, required=True, help="output .npz (embeddings [T, D], files)")
    args = parser.parse_args(argv)
    try:
        images = [path.read_bytes() for path in args.images]
        with client_from_args(args, parser) as client:
            result = client.encode(images)
    except (OSError, VidlstmError) as error:
        parser.exit(1, f"vidlstm encode-images: {error}\n")
    tmp = args.out.with_name(f".{args.out.name}.tmp.npz")
    np.savez(
        tmp,
        embeddings=result.embeddings,
        files=np.array([str(p) for p in args.images]),
        weights_hash=np.array(result.weights.weights_hash),
    )
    tmp.replace(args.out)
    print(f"wrote {args.out}: {len(images)} frames -> embeddings {list(result.embeddings.shape)}")
    return 0
