"""`vidlstm import sb3 MODEL.zip --out DIR` / `vidlstm import cleanrl AGENT.pt --out DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vidlstm.models import CheckpointError, save_checkpoint, weights_hash
from vidlstm.models.importers import from_cleanrl, from_sb3

__all__ = ["import_main"]

_IMPORTERS = {"sb3": from_sb3, "cleanrl": from_cleanrl}


def import_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vidlstm import", description="Turn a trained recurrent agent into a vidlstm checkpoint."
    )
    parser.add_argument(
        "library", choices=sorted(_IMPORTERS), help="sb3 (sb3-contrib RecurrentPPO) or cleanrl"
    )
    parser.add_argument("source", type=Path, help="SB3 model .zip, or CleanRL Agent state dict (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="folder for model.safetensors")
    parser.add_argument("--size", type=int, nargs=2, default=(84, 84), metavar=("H", "W"), help="input size")
    parser.add_argument("--rgb", action="store_true", help="frames were RGB, not gray")
    args = parser.parse_args(argv)
    try:
        model = _IMPORTERS[args.library](
            args.source, height=args.size[0], width=args.size[1], grayscale=not args.rgb
        )
    except CheckpointError as error:
        parser.exit(1, f"vidlstm import: {error}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(model, args.out / "model.safetensors")
    inp = model.spec.input
    print(
        f"wrote {path}: nature encoder, LSTM {model.spec.core.hidden_size} x {model.spec.core.num_layers}, "
        f"{inp.height}x{inp.width} {'gray' if inp.grayscale else 'RGB'} stack {inp.frame_stack}, "
        f"weights {weights_hash(model)[:12]}\nserve it: vidlstm serve --model {path}"
    )
    return 0
