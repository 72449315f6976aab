"""Video benchmark: decode, model and the end-to-end pipeline, measured in the same run.

For a 1280x720 H.264 video (made here with PyAV), for the default model and for resnet18 at 224:
decode-only frames/s (PyAV and OpenCV), decode + preprocessing (the pipeline's first stage),
model-only frames/s on prepared frames, the end-to-end pipeline (`vidlstm encode-video`'s path),
and the loop people write by hand: OpenCV reads one frame, the model runs on it, repeat.

    python benchmarks/bench_video.py [--frames 300] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from vidlstm.models import (
    EncoderSpec,
    InferenceModel,
    InputSpec,
    ModelSpec,
    PixelFormat,
    build_model,
    default_spec,
    prepare_frames,
)
from vidlstm.models.video import decode_video
from vidlstm.models.video_pipeline import encode_video, prepared_chunks
from vidlstm.selection import FrameSelection

IMAGENET = InputSpec(
    height=224, width=224, grayscale=False, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


def make_video(path: Path, frames: int) -> None:
    """720p H.264 with textured, moving content (so decoding does real work)."""
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(0, 256, (180, 320, 3), dtype=np.uint8), (1600, 900))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for index in range(frames):
            x, y = (index * 3) % 300, (index * 2) % 160
            image = np.ascontiguousarray(texture[y : y + 720, x : x + 1280])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def rate(count: int, run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def opencv_decode(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    return count


def hand_written_loop(model: InferenceModel, path: Path) -> None:
    """The baseline: one frame at a time, OpenCV decode, colour + resize, one model call."""
    capture = cv2.VideoCapture(str(path))
    state = None
    with torch.inference_mode():
        while True:
            ok, image = capture.read()
            if not ok:
                break
            frame = prepare_frames(image[None], PixelFormat.BGR, model.model.spec.input)
            _, state = model.encode(frame[:, None], state)


def bench(name: str, model: InferenceModel, path: Path, frames: int, chunk: int) -> dict[str, float]:
    spec = model.model.spec.input

    def stage_one() -> list[object]:
        return list(
            prepared_chunks(path, spec, FrameSelection(), chunk_frames=chunk, backend="pyav", threads=0)
        )

    prepared = stage_one()

    def model_only() -> None:
        state = None
        for c in prepared:
            _, state = model.encode(c.frames[:, None], state)  # type: ignore[attr-defined]

    model_only()  # warm-up
    results = {
        "decode (PyAV, RGB)": rate(frames, lambda: sum(1 for _ in decode_video(path))),
        "decode (OpenCV, BGR)": rate(frames, lambda: opencv_decode(path)),
        "decode + preprocess": rate(frames, stage_one),
        "model only": rate(frames, model_only),
        "end to end": rate(frames, lambda: list(encode_video(model, path, chunk_frames=chunk))),
        "one frame at a time (OpenCV + model)": rate(frames, lambda: hand_written_loop(model, path)),
    }
    best = 1 / (1 / results["decode + preprocess"] + 1 / results["model only"])
    print(f"\n### {name}\n\n| stage | frames/s |\n|---|---:|")
    for stage, value in results.items():
        print(f"| {stage} | {value:,.0f} |")
    print(f"| two stages on these cores at best, 1/(1/decode+preprocess + 1/model) | {best:,.0f} |")
    loop = results["one frame at a time (OpenCV + model)"]
    print(
        f"\nend to end / best two-stage: {results['end to end'] / best:.2f} (target >= 0.9); "
        f"end to end / one-frame loop: {results['end to end'] / loop:.1f}x"
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=300, help="frames in the test video (default 300)")
    parser.add_argument("--quick", action="store_true", help="60 frames, a smoke run")
    args = parser.parse_args()
    frames = 60 if args.quick else args.frames
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        long, short = Path(folder) / "long.mp4", Path(folder) / "short.mp4"
        make_video(long, frames)
        make_video(short, max(frames // 4, 30))  # resnet18 runs at tens of frames/s here
        print(f"1280x720 H.264, {torch.get_num_threads()} torch threads")
        nature = InferenceModel(build_model(default_spec()), device)
        bench(f"default model (Nature CNN 84x84 gray + LSTM 256), {frames} frames", nature, long, frames, 128)
        resnet = ModelSpec(name="resnet18", encoder=EncoderSpec("resnet18"), input=IMAGENET)
        count = max(frames // 4, 30)
        bench(
            f"resnet18 at 224 + LSTM 256, {count} frames",
            InferenceModel(build_model(resnet), device),
            short,
            count,
            8,
        )


if __name__ == "__main__":
    main()
