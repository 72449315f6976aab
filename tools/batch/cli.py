"""`vidlstm encode-video INPUT... --out DIR`: in process by default, `--server` for a running server,
`--ray` / `--ray-address` on Ray workers (needs vidlstm[ray]; Ray is imported only then)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from vidlstm.clients import FrameSelection, VidlstmError
from vidlstm.clients.cli import add_connection_args, client_from_args

from .backends import Backend, LocalBackend, RemoteBackend
from .cores import usable_cores
from .inputs import InputError, expand_inputs
from .outputs import FORMATS
from .ray_cli import add_ray_args, ray_backend, ray_only_flags
from .runner import RunOptions, run

__all__ = ["encode_video_main"]

# More threads than this only add overhead; FFmpeg fails every video with far more (100000).
MAX_DECODER_THREADS = 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidlstm encode-video",
        description="Embed videos: files, folders (recursive), glob patterns or @list.txt files.",
    )
    parser.add_argument("inputs", nargs="+", help="video files, folders, globs, or @file with one per line")
    parser.add_argument("--out", type=Path, required=True, help="output folder (mirrors the input tree)")
    parser.add_argument("--format", choices=FORMATS, default="npz", help="output format (default: npz)")
    parser.add_argument("--save-state", action="store_true", help="also save the final LSTM state")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, log lines only")
    parser.add_argument(
        "--jobs",
        type=_count(1),
        help="videos at once: decoder processes, or uploads with --server (default: the usable cores)",
    )
    pick = parser.add_argument_group("frame selection")
    rate = pick.add_mutually_exclusive_group()
    rate.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    rate.add_argument("--fps", type=float, help="keep one frame per 1/F s of presentation time")
    pick.add_argument("--start", type=float, default=0.0, help="from this time (s)")
    pick.add_argument("--end", type=float, help="up to this time (s)")
    pick.add_argument("--max-frames", type=int, help="at most this many frames per video")
    where = parser.add_argument_group("where the model runs")
    add_connection_args(where, default_server=None)
    where.add_argument("--model", type=Path, help="checkpoint (default: the seeded default model)")
    where.add_argument("--spec", type=Path, help="model spec for weights that carry none")
    where.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    where.add_argument(
        "--threads", type=_count(1), help="torch threads (default: the usable cores - --jobs, at least 1)"
    )
    where.add_argument("--precision", default="fp32", help="the CNN's arithmetic: fp32 (default), bf16, fp16")
    where.add_argument("--compile", action="store_true", help="torch.compile the CNN (on CPU: needs g++)")
    add_ray_args(parser.add_argument_group("on Ray (pip install 'vidlstm[ray]')"))
    decode = parser.add_argument_group("decoding (in process)")
    decode.add_argument("--decoder", choices=("pyav", "opencv"), default="pyav", help="default: pyav")
    decode.add_argument(
        "--decoder-threads",
        type=_count(0, MAX_DECODER_THREADS),
        help="FFmpeg's threads per video (default: the usable cores / --jobs; 0: FFmpeg picks)",
    )
    decode.add_argument("--chunk-frames", type=_count(1), default=128, help="frames per model call")
    decode.add_argument(
        "--gray",
        choices=("luma", "rgb"),
        default="luma",
        help="a gray model's frames: the decoder's luma plane where it is their gray (default), or "
        "RGB turned gray (as before 2026-11-26)",
    )
    return parser


def _count(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number >= `least` (and <= `most`)."""
    bounds = f">= {least}" if most is None else f">= {least} and <= {most}"

    def parse(text: str) -> int:
        value = int(text) if text.strip().isdigit() else None
        if value is None or value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, got {text!r}")
        return value

    return parse


def encode_video_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        selection = FrameSelection(args.every, args.fps, args.start, args.end, args.max_frames)
    except ValueError as error:
        parser.error(f"frame selection: {error}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        inputs = expand_inputs(args.inputs)
        backend = _backend(args, parser)
    except (InputError, VidlstmError, OSError, ValueError, RuntimeError) as error:
        parser.exit(2, f"vidlstm encode-video: {error}\n")
    options = RunOptions(args.out, args.format, selection, args.save_state, args.quiet)
    return run(inputs, backend, options)


def _backend(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Backend:
    if args.ray or args.ray_address:
        return ray_backend(args, parser)
    stray = ray_only_flags(args)
    if stray:
        parser.error(f"{', '.join(stray)} apply with --ray or --ray-address")
    if args.server:
        if args.precision != "fp32" or args.compile:
            parser.error("--precision and --compile apply in process; a server runs with its own")
        if args.gray != "luma" or args.decoder != "pyav":
            parser.error(
                "--gray and --decoder apply in process; a server decodes with its own decoder, gray models "
                "from the luma plane"
            )
        return RemoteBackend(client_from_args(args, parser), jobs=args.jobs or usable_cores())
    from vidlstm.models import load_inference_model, select_device

    try:
        select_device(args.device)
    except ValueError as error:
        raise ValueError(f"--device: {error}") from None
    cores = usable_cores()
    jobs = args.jobs or cores
    per_job = max(1, cores // jobs)  # decoders x their threads = the cores: none oversubscribed
    model = load_inference_model(
        model=args.model,
        spec=args.spec,
        device=args.device,
        # The cores the decoders leave (>= 1): measured here, 2 torch threads beside 2 decoders on
        # 2 cores made the run 1.4x slower than 1.
        threads=args.threads or max(1, cores - jobs),
        precision=args.precision,
        compile=args.compile,
    )
    return LocalBackend(
        model,
        jobs=jobs,
        decoder=args.decoder,
        decoder_threads=per_job if args.decoder_threads is None else args.decoder_threads,
        opencv_threads=per_job,
        chunk_frames=args.chunk_frames,
        luma=args.gray == "luma",
    )
