"""The gray fast path: a gray model's frames come from the decoder's luma plane, range-expanded,
equal to FFmpeg's own gray conversion and within the stated tolerance of the RGB path; streams
whose matrix is not BT.601's take the RGB path; `--gray` is in the resume fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import reference_embeddings
from videos import decode_reference, write_video

from vidlstm.models import InferenceModel, PixelFormat, prepare_frames
from vidlstm.models.video import decode_video
from vidlstm.tools.batch.cli import encode_video_main

# Stated in the README (Video files): the model input's mean difference from the RGB path, in grey
# levels, and the default model's embeddings.
MEAN_LEVELS = 1.5
EMBEDDINGS = 1e-3

CASES = {
    "limited.mp4": {"frames": 12, "textured": True},  # H.264 4:2:0, limited range
    "full.avi": {"codec": "mjpeg", "pixel_format": "yuvj420p", "frames": 6, "textured": True},
    "odd444.mp4": {"width": 317, "height": 211, "pixel_format": "yuv444p", "frames": 5, "textured": True},
    "vp9.webm": {"codec": "libvpx-vp9", "frames": 6, "textured": True},
    "saturated.mp4": {"frames": 12},  # pure colours: RGB clips where the luma does not
    "rotated.mp4": {"frames": 4, "rotation": 90, "textured": True},
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gray")
    for name, options in CASES.items():
        write_video(root / name, **options)  # type: ignore[arg-type]
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_the_luma_path_is_ffmpegs_gray_and_close_to_the_rgb_path(
    clips: Path, model: InferenceModel, name: str
) -> None:
    frames = list(decode_video(clips / name, gray=True))
    assert {f.pixel_format for f in frames} == {PixelFormat.GRAY}
    luma = np.stack([f.image for f in frames])
    np.testing.assert_array_equal(luma, decode_reference(clips / name, gray=True)[0])
    rgb = np.stack([f.image for f in decode_video(clips / name)])
    spec = model.input_spec
    from_luma = prepare_frames(luma, PixelFormat.GRAY, spec).astype(float)
    from_rgb = prepare_frames(rgb, PixelFormat.RGB, spec).astype(float)
    assert np.abs(from_luma - from_rgb).mean() <= MEAN_LEVELS
    np.testing.assert_allclose(
        reference_embeddings(model, luma, PixelFormat.GRAY),
        reference_embeddings(model, rgb, PixelFormat.RGB),
        atol=EMBEDDINGS,
        rtol=0,
    )


def test_a_bt709_stream_takes_the_rgb_path(tmp_path: Path) -> None:
    """BT.709's chroma adds to BT.601's gray of its RGB: its luma plane is not that gray."""
    video = write_video(tmp_path / "hd.mp4", frames=4, bt709=True)
    gray = list(decode_video(video, gray=True))
    assert {f.pixel_format for f in gray} == {PixelFormat.RGB}
    np.testing.assert_array_equal([f.image for f in gray], [f.image for f in decode_video(video)])


def test_gray_source_is_in_the_fingerprint(clips: Path, model: InferenceModel, tmp_path: Path) -> None:
    """`--gray luma` (the default) and `--gray rgb` give different outputs, each its own fingerprint;
    `rgb`'s is that of earlier versions, so their outputs stay done."""
    video, out = clips / "saturated.mp4", tmp_path / "out"

    def encode(*flags: str) -> dict[str, object]:
        assert encode_video_main(["--quiet", str(video), "--out", str(out), "--device", "cpu", *flags]) == 0
        return json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])

    def saved() -> tuple[np.ndarray, dict[str, object]]:
        with np.load(out / "saturated.mp4.npz") as data:
            return data["embeddings"], json.loads(str(data["metadata"]))

    rgb = encode("--gray", "rgb")
    embeddings, metadata = saved()
    assert "gray" not in metadata["options"]  # type: ignore[operator]
    frames = decode_reference(video)[0]
    np.testing.assert_allclose(embeddings, reference_embeddings(model, frames, PixelFormat.RGB), atol=1e-5)
    luma = encode()
    assert (rgb["status"], luma["status"]) == ("ok", "ok")
    assert luma["fingerprint"] != rgb["fingerprint"]
    embeddings, metadata = saved()
    assert metadata["options"]["gray"] == "luma"  # type: ignore[index]
    frames = decode_reference(video, gray=True)[0]
    np.testing.assert_allclose(embeddings, reference_embeddings(model, frames, PixelFormat.GRAY), atol=1e-5)
    assert encode()["status"] == "skipped"
    assert encode("--decoder", "opencv")["fingerprint"] == rgb["fingerprint"]  # OpenCV: RGB only
