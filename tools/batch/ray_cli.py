"""encode-video's Ray flags and the Ray backend they build. Ray itself is imported only when a run
asks for it (`--ray`, `--ray-address`), so the tool works without vidlstm[ray]."""

from __future__ import annotations

import argparse
import math
import socket
from collections.abc import Callable
from pathlib import Path

from vidlstm.clients import FrameSelection

from .backends import Backend, result_options

__all__ = ["add_ray_args", "ray_backend", "ray_only_flags"]


def add_ray_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--ray", action="store_true", help="run on Ray workers started here")
    group.add_argument(
        "--ray-address", metavar="ADDR", help="run on the Ray cluster at ADDR (--out on a shared disk)"
    )
    group.add_argument(
        "--workers",
        type=_workers,
        metavar="MIN[:MAX]",
        help="Ray workers, each loading the model once: N, or MIN:MAX (default: 1:as many as the CPUs hold)",
    )
    # Defaults applied in ray_backend(): None here tells a flag given (even at its default) from none.
    group.add_argument("--cpus-per-worker", type=_amount(zero=False), help="default: 1")
    group.add_argument("--gpus-per-worker", type=_amount(zero=True), help="default: 0 (CPU)")
    group.add_argument(
        "--ray-token-file",
        type=Path,
        metavar="FILE",
        help="the cluster's token, if it has token authentication",
    )


def _workers(text: str) -> tuple[int, int]:
    """`N` (a fixed pool) or `MIN:MAX` (scaling between), whole numbers with 1 <= MIN <= MAX."""
    low, _, high = text.partition(":")
    try:
        least, most = int(low), int(high or low)
    except ValueError:
        least = most = 0
    if least < 1 or most < least:
        raise argparse.ArgumentTypeError(
            f"must be N or MIN:MAX, whole numbers with 1 <= MIN <= MAX; got {text!r}"
        )
    return least, most


def _amount(*, zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number > 0 (>= 0 where `zero`)."""
    bound = ">= 0" if zero else "> 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text!r}")
        return value

    return parse


def ray_only_flags(args: argparse.Namespace) -> list[str]:
    """The Ray flags given: a usage error without --ray."""
    given = {
        "--workers": args.workers,
        "--cpus-per-worker": args.cpus_per_worker,
        "--gpus-per-worker": args.gpus_per_worker,
        "--ray-token-file": args.ray_token_file,
    }
    return [flag for flag, value in given.items() if value is not None]


def check_reachable(address: str, parser: argparse.ArgumentParser) -> None:
    """Refuses an address where nothing accepts connections: Ray would retry joining for minutes
    (and ignore SIGTERM meanwhile). "auto" and addresses without a port are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        parser.error(
            f"--ray-address {address}: nothing accepts connections there ({error}); start the cluster "
            "(ray start --head) or give its head's address"
        )


def ray_backend(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Backend:
    """Ray workers, each loading the model once; the model is loaded here too (on CPU, in fp32) for
    the weights hash and spec that decide what is done already."""
    if args.server:
        parser.error("--server and --ray/--ray-address: pick one")
    if args.jobs is not None:
        parser.error("--jobs counts this process's decoders; with Ray, --workers counts the workers")
    if args.device != "auto":
        parser.error(
            "--device applies in process; a Ray worker runs on its GPU with --gpus-per-worker, else on CPU"
        )
    if args.ray_token_file is not None and not args.ray_address:
        parser.error("--ray-token-file applies with --ray-address (a Ray started here makes its own token)")
    if args.ray_token_file is not None:
        from .ray_auth import use_token_file

        use_token_file(args.ray_token_file)  # before Ray is imported: it reads the mode once
    try:
        from .ray_backend import Encoding, RayBackend, RayOptions
    except ImportError as error:
        raise RuntimeError(f"--ray needs Ray: pip install 'vidlstm[ray]' ({error})") from None
    from vidlstm.models import load_inference_model

    from .decoders import DecodeOptions
    from .ray_worker import ModelOptions

    cpus = 1.0 if args.cpus_per_worker is None else args.cpus_per_worker
    gpus = 0.0 if args.gpus_per_worker is None else args.gpus_per_worker
    if args.ray_address:
        check_reachable(args.ray_address, parser)
    per_worker = max(1, int(cpus))
    device = "cuda" if gpus > 0 else "cpu"
    model_path, spec_path = (None if p is None else p.resolve() for p in (args.model, args.spec))
    # Absolute paths: workers start in other folders.
    options = ModelOptions(
        model_path, spec_path, device, args.threads or per_worker, args.precision, args.compile
    )
    model = load_inference_model(model=args.model, spec=args.spec, device="cpu", threads=1)
    grayscale_luma = args.gray == "luma"
    encoding = Encoding(
        model.weights_hash,
        model.spec.to_json(),
        result_options(args.precision, model.input_spec.grayscale, decoder=args.decoder, luma=grayscale_luma),
    )
    decode = DecodeOptions(
        model.input_spec,
        FrameSelection(),  # the run's own, set when it starts
        args.chunk_frames,
        args.decoder,
        per_worker if args.decoder_threads is None else args.decoder_threads,
        per_worker,
        grayscale_luma,
    )
    low, high = args.workers or (1, None)
    ray_options = RayOptions(args.ray_address, low, high, cpus, gpus)
    return RayBackend(ray_options, options, encoding, decode)
