"""Precision and compile options against fp32 eager, on CPU.

Tolerances, relative to the largest |value| of the fp32 result (embeddings, and the state after a
sequence with resets): bf16 5% and fp16 1% (measured here: bf16 1.6% and fp16 0.3% for resnet18,
0.1% and 0.02% for the default model); compile 1e-4 (the same fp32 arithmetic, fused).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ServerThread
from videos import write_video

from vidlstm.clients import EncoderClient, FrameSelection
from vidlstm.models import (
    CoreSpec,
    EncoderSpec,
    InferenceModel,
    InputSpec,
    ModelSpec,
    State,
    build_model,
    default_spec,
)
from vidlstm.models.runtime import batch_bucket
from vidlstm.service import ServerSettings
from vidlstm.service.cli import load_settings
from vidlstm.tools.batch.cli import encode_video_main
from vidlstm.tools.batch.manifest import fingerprint

TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
RESNET18 = ModelSpec(
    name="resnet18-64",
    encoder=EncoderSpec(name="resnet18"),
    input=InputSpec(
        height=64, width=64, grayscale=False, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    ),
    core=CoreSpec(hidden_size=64),
)
CPU = torch.device("cpu")


def assert_near(got: np.ndarray, want: np.ndarray, relative: float) -> None:
    error, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    assert error <= relative * scale, f"max |error| {error:.3g} > {relative} x max |fp32| {scale:.3g}"


def sequence(
    spec: ModelSpec, rng: np.random.Generator, steps: int = 8, envs: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, B, C, H, W] and episode starts [T, B] with resets part-way."""
    inp = spec.input
    frames = rng.integers(0, 256, (steps, envs, inp.channels, inp.height, inp.width), dtype=np.uint8)
    return frames, rng.random((steps, envs)) < 0.25


def run(model: InferenceModel, frames: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, State]:
    embeddings, state = model.encode(frames, episode_start=starts)
    return embeddings, {name: tensor.cpu() for name, tensor in state.items()}


@pytest.mark.parametrize("spec", [default_spec(), RESNET18], ids=["default", "resnet18"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_match_fp32_and_keep_the_weights_identity(
    spec: ModelSpec, precision: str, rng: np.random.Generator
) -> None:
    reference = InferenceModel(build_model(spec), CPU)
    model = InferenceModel(build_model(spec), CPU, precision)
    assert model.weights_hash == reference.weights_hash  # state and video outputs stay valid
    frames, starts = sequence(spec, rng)
    want, want_state = run(reference, frames, starts)
    got, got_state = run(model, frames, starts)
    assert got.dtype == np.float32
    assert_near(got, want, TOLERANCE[precision])
    for name in ("h", "c"):
        assert got_state[name].dtype == torch.float32  # the LSTM state stays fp32
        assert_near(got_state[name].numpy(), want_state[name].numpy(), TOLERANCE[precision])


def test_a_bf16_server_takes_state_from_an_fp32_server(
    server: ServerThread, rng: np.random.Generator
) -> None:
    """The same weights_hash: a state an fp32 replica handed out continues on a bf16 one."""
    frames = rng.integers(0, 256, (6, 84, 84, 1), dtype=np.uint8)
    half = ServerThread(ServerSettings(port=0), InferenceModel(build_model(default_spec()), CPU, "bf16"))
    try:
        with EncoderClient(server.address) as fp32, EncoderClient(half.address) as bf16:
            first = fp32.encode(frames[:3], pixel_format="GRAY")
            want = fp32.encode(frames[3:], state=first.state, pixel_format="GRAY")
            got = bf16.encode(frames[3:], state=first.state, pixel_format="GRAY")
    finally:
        half.stop()
    assert_near(got.embeddings, want.embeddings, TOLERANCE["bf16"])


def test_unknown_precision_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'; use fp32, bf16, fp16"):
        InferenceModel(build_model(default_spec()), CPU, "fp8")


def test_precision_and_compile_are_serve_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(["--precision", "bf16", "--compile", "true"])
    assert (settings.precision, settings.compile) == ("bf16", True)
    monkeypatch.setenv("VIDLSTM_PRECISION", "fp16")
    assert load_settings([]).precision == "fp16"
    with pytest.raises(
        SystemExit, match=r"precision: Input should be 'fp32', 'bf16' or 'fp16' \(got 'fp8'\)"
    ):
        load_settings(["--precision", "fp8"])


def test_compile_without_a_compiler_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, c++ or clang++ here
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ValueError, match=r"compile on cpu needs a C\+\+ compiler .* install one"):
        InferenceModel(build_model(default_spec()), CPU, compile=True)


def test_batch_buckets_are_powers_of_two() -> None:
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 64, 65, 256)] == [1, 2, 4, 8, 64, 128, 256]


@pytest.mark.slow
def test_compiled_model_matches_eager_and_never_recompiles_after_warm_up(rng: np.random.Generator) -> None:
    """Warm-up compiles one graph per batch bucket; afterwards no batch size (nor T > 1) compiles."""
    reference = InferenceModel(build_model(default_spec()), CPU)
    model = InferenceModel(build_model(default_spec()), CPU, compile=True)
    model.warm_up(max_batch_size=4)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for envs in (1, 2, 3, 4):
            frames, starts = sequence(default_spec(), rng, steps=1, envs=envs)
            assert_near(run(model, frames, starts)[0], run(reference, frames, starts)[0], 1e-4)
        frames, starts = sequence(default_spec(), rng, steps=2, envs=2)  # 4 frames: a warm bucket
        assert_near(run(model, frames, starts)[0], run(reference, frames, starts)[0], 1e-4)


def test_encode_video_records_the_precision_in_its_fingerprint(tmp_path: Path) -> None:
    """A bf16 run encodes again what an fp32 run made, and skips it the next time; fp32 outputs of
    earlier versions (whose fingerprint has no precision) stay done."""
    video = write_video(tmp_path / "clip.mp4", frames=6)
    out = tmp_path / "out"

    def encode(*flags: str) -> dict[str, object]:
        args = ["--quiet", str(video), "--out", str(out), "--device", "cpu", "--gray", "rgb", *flags]
        assert encode_video_main(args) == 0
        return json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])

    fp32 = encode()
    bf16 = encode("--precision", "bf16")
    assert (fp32["status"], bf16["status"]) == ("ok", "ok")
    assert bf16["fingerprint"] != fp32["fingerprint"]
    assert encode("--precision", "bf16")["status"] == "skipped"
    metadata = json.loads(str(np.load(out / "clip.mp4.npz")["metadata"]))
    assert metadata["options"]["precision"] == "bf16"
    weights = InferenceModel(build_model(default_spec()), CPU).weights_hash
    earlier = {"selection": asdict(FrameSelection()), "format": "npz", "state": False}
    assert fp32["fingerprint"] == fingerprint(weights, earlier)


def test_encode_video_refuses_precision_for_a_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = write_video(tmp_path / "clip.mp4", frames=2)
    args = [str(video), "--out", str(tmp_path / "out"), "--server", "localhost:1", "--precision", "bf16"]
    with pytest.raises(SystemExit) as exit_info:
        encode_video_main(args)
    assert exit_info.value.code == 2
    assert "--precision and --compile apply in process; a server runs with its own" in capsys.readouterr().err


def test_encode_video_on_a_server_records_the_servers_precision(tmp_path: Path) -> None:
    """With --server, the precision comes from the server's ModelInfo: outputs of a bf16 server are
    encoded again by an fp32 one, never skipped as done."""
    video = write_video(tmp_path / "clip.mp4", frames=6)
    out = tmp_path / "out"

    def encode_on(precision: str) -> dict[str, object]:
        running = ServerThread(
            ServerSettings(port=0), InferenceModel(build_model(default_spec()), CPU, precision)
        )
        try:
            args = ["--quiet", str(video), "--out", str(out), "--server", running.address]
            assert encode_video_main(args) == 0
        finally:
            running.stop()
        return json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])

    bf16 = encode_on("bf16")
    assert json.loads(str(np.load(out / "clip.mp4.npz")["metadata"]))["options"]["precision"] == "bf16"
    fp32 = encode_on("fp32")
    assert (bf16["status"], fp32["status"]) == ("ok", "ok")
    assert fp32["fingerprint"] != bf16["fingerprint"]
    assert "precision" not in json.loads(str(np.load(out / "clip.mp4.npz")["metadata"]))["options"]
    assert encode_on("fp32")["status"] == "skipped"
