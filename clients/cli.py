"""Client commands: `vidlstm info` and `vidlstm encode-images` (grpcio + numpy only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .client import EncoderClient
from .errors import VidlstmError

__all__ = ["encode_images_main", "info_main"]


def _server_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--server", default="localhost:50051", help="HOST:PORT (default: localhost:50051)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default: 60)")
    return parser


def info_main(argv: list[str]) -> int:
    parser = _server_parser("vidlstm info", "Describe the model a server serves.")
    parser.add_argument("--json", action="store_true", help="print the full info as JSON")
    args = parser.parse_args(argv)
    try:
        with EncoderClient(args.server, timeout=args.timeout) as client:
            info = client.info()
    except VidlstmError as error:
        parser.exit(1, f"vidlstm info: {error}\n")
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(info), indent=2))
        return 0
    state = ", ".join(f"{s.name} {list(s.shape)}" for s in info.state)
    print(f"model          {info.name}")
    print(
        f"input          {info.input_height}x{info.input_width}, {info.input_channels} channel(s), "
        f"stack {info.frame_stack}"
    )
    print(f"embedding      {info.embedding_size} float32")
    print(f"state          {state}")
    print(f"weights        sha256:{info.weights_hash}")
    print(f"device         {info.device}")
    return 0


def encode_images_main(argv: list[str]) -> int:
    parser = _server_parser(
        "vidlstm encode-images", "Embed JPEG/PNG files, in the given order, as one frame sequence."
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files, in time order")
    parser.add_argument("--out", type=Path, required=True, help="output .npz (embeddings [T, D], files)")
    args = parser.parse_args(argv)
    try:
        images = [path.read_bytes() for path in args.images]
        with EncoderClient(args.server, timeout=args.timeout) as client:
            result = client.encode(images)
            weights_hash = client.info().weights_hash
    except (OSError, VidlstmError) as error:
        parser.exit(1, f"vidlstm encode-images: {error}\n")
    tmp = args.out.with_name(f".{args.out.name}.tmp.npz")
    np.savez(
        tmp,
        embeddings=result.embeddings,
        files=np.array([str(p) for p in args.images]),
        weights_hash=np.array(weights_hash),
    )
    tmp.replace(args.out)
    print(f"wrote {args.out}: {len(images)} frames -> embeddings {list(result.embeddings.shape)}")
    return 0
