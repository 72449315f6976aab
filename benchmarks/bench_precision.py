"""Precision and compile benchmark: the in-process model (one T=1 step with state in and out, frames
from host memory, embeddings back to it) in fp32, bf16 and compiled, for the default model and
resnet18 at 224, as ratios to fp32 measured in the same run. Variants take turns for `--rounds`
rounds and each keeps its median, so a machine that slows down for a while hurts all alike.

    python benchmarks/bench_precision.py [--duration 2] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from vidlstm.models import EncoderSpec, InferenceModel, InputSpec, ModelSpec, build_model, default_spec

RESNET18_224 = ModelSpec(
    name="resnet18-224",
    encoder=EncoderSpec(name="resnet18"),
    input=InputSpec(
        height=224, width=224, grayscale=False, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    ),
)


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str
    compile: bool = False


VARIANTS = [Variant("fp32", "fp32"), Variant("bf16", "bf16"), Variant("compile", "fp32", compile=True)]


def load(spec: ModelSpec, variant: Variant, device: torch.device) -> InferenceModel:
    return InferenceModel(build_model(spec), device, variant.precision, variant.compile)


def steps_per_s(model: InferenceModel, batch: int, duration: float) -> float:
    """T=1 steps of `batch` envs for `duration` s (after two steps that compile and tune); frames/s."""
    inp = model.input_spec
    frames = np.random.default_rng(0).integers(
        0, 256, (1, batch, inp.channels, inp.height, inp.width), np.uint8
    )
    state = None
    for _ in range(2):
        _, state = model.encode(frames, state)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration:
        _, state = model.encode(frames, state)  # returns numpy: the device is done
        steps += 1
    return steps * batch / (time.perf_counter() - started)


def compare(
    spec: ModelSpec, variants: list[Variant], batch: int, duration: float, rounds: int, device: torch.device
) -> dict[str, float]:
    """Median frames/s of each variant over `rounds` interleaved rounds."""
    models = {v.name: load(spec, v, device) for v in variants}
    runs: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            runs[name].append(steps_per_s(model, batch, duration))
    return {name: statistics.median(values) for name, values in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="0.3 s, 1 round (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    duration, rounds = (0.3, 1) if args.quick else (args.duration, args.rounds)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"CPU, {torch.get_num_threads()} torch threads, {rounds} round(s) of {duration} s per variant\n")
    print("| model | batch | variant | frames/s | vs fp32 |\n|---|---:|---|---:|---:|")
    for label, spec, batch in (("default", default_spec(), 64), ("resnet18 224", RESNET18_224, 16)):
        rates = compare(spec, VARIANTS, batch, duration, rounds, cpu)
        for name, rate in rates.items():
            print(f"| {label} | {batch} | {name} | {rate:,.0f} | {rate / rates['fp32']:.2f}x |")


if __name__ == "__main__":
    main()
