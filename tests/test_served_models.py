"""Every kind of model the project can produce, served by a real `vidlstm serve` process: the default,
a frame stack (from a spec file), RGB input (a checkpoint), and each importer's output (SB3 with and
without a frame stack, CleanRL). A vector stream with resets, chained Encode calls and a KServe v2
sequence with restarts (tritonclient) must equal the in-process model loaded from the same files;
so must the server's runtime options (precision, compile)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
from conftest import TOKEN, ServeProcess
from kserve_client import step

from vidlstm.clients import SequenceInput
from vidlstm.models import (
    EmbeddingModel,
    InferenceModel,
    ModelSpec,
    PixelFormat,
    build_model,
    default_spec,
    load_model,
    prepare_frames,
    save_checkpoint,
)
from vidlstm.tools.import_cli import import_main

STEPS, ENVS = 8, 3
Served = tuple[list[str], EmbeddingModel]  # `vidlstm serve` flags, the same model in process


def default_model(tmp_path: Path) -> Served:
    return [], build_model(default_spec())


def frame_stack_spec(tmp_path: Path) -> Served:
    spec = default_spec()
    spec = dataclasses.replace(spec, input=dataclasses.replace(spec.input, frame_stack=4), seed=4)
    spec.save(tmp_path / "spec.json")
    return ["--spec", str(tmp_path / "spec.json")], build_model(ModelSpec.load(tmp_path / "spec.json"))


def rgb_checkpoint(tmp_path: Path) -> Served:
    spec = default_spec()
    rgb = dataclasses.replace(spec.input, grayscale=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    path = save_checkpoint(
        build_model(dataclasses.replace(spec, input=rgb, seed=5)), tmp_path / "rgb.safetensors"
    )
    return ["--model", str(path)], load_model(path)


def sb3_import(tmp_path: Path, n_stack: int) -> Served:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack
    from test_rl import FrameEnv

    venv = DummyVecEnv([lambda: FrameEnv(1)])
    if n_stack > 1:
        venv = VecFrameStack(venv, n_stack=n_stack)
    agent = RecurrentPPO("CnnLstmPolicy", venv, n_steps=8, seed=0, policy_kwargs={"lstm_hidden_size": 32})
    agent.save(tmp_path / "agent.zip")
    assert import_main(["sb3", str(tmp_path / "agent.zip"), "--out", str(tmp_path / "sb3")]) == 0
    path = tmp_path / "sb3" / "model.safetensors"
    return ["--model", str(path)], load_model(path)


def cleanrl_import(tmp_path: Path) -> Served:
    from test_rl import CleanRLAgent

    torch.manual_seed(0)
    torch.save(CleanRLAgent().state_dict(), tmp_path / "agent.pt")
    assert import_main(["cleanrl", str(tmp_path / "agent.pt"), "--out", str(tmp_path / "cleanrl")]) == 0
    path = tmp_path / "cleanrl" / "model.safetensors"
    return ["--model", str(path)], load_model(path)


MODELS: dict[str, Callable[[Path], Served]] = {
    "default": default_model,
    "frame stack 4 (spec)": frame_stack_spec,
    "rgb (checkpoint)": rgb_checkpoint,
    "sb3 VecFrameStack 4": lambda tmp_path: sb3_import(tmp_path, 4),
    "sb3 no frame stack": lambda tmp_path: sb3_import(tmp_path, 1),
    "cleanrl": cleanrl_import,
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", MODELS)
def test_served_model_equals_the_in_process_model(kind: str, tmp_path: Path) -> None:
    flags, built = MODELS[kind](tmp_path)
    model = InferenceModel(built, torch.device("cpu"))
    rng = np.random.default_rng(len(kind))
    frames = rng.integers(0, 256, (STEPS, ENVS, 60, 50, 3), dtype=np.uint8)  # RGB, resized by the server
    starts = rng.random((STEPS, ENVS)) < 0.25
    starts[0] = True
    prepared = np.stack([prepare_frames(f, PixelFormat.RGB, built.spec.input) for f in frames])
    expected, _ = model.encode(prepared, episode_start=starts)

    server = ServeProcess(*flags)
    try:
        with server.client() as client:
            assert client.info().weights_hash == model.weights_hash
            with client.session(ENVS) as session:
                streamed = np.stack([session.step(frames[t], starts[t]) for t in range(STEPS)])
            half = STEPS // 2
            head = client.encode(frames[:half, 0], episode_start=starts[:half, 0])
            tail = client.encode_many(
                [SequenceInput(frames[half:, 0], starts[half:, 0], head.state)], return_state=False
            )[0]
        with tg.InferenceServerClient(server.address) as triton:
            bearer = {"authorization": f"Bearer {TOKEN}"}
            kserve = [
                step(triton, 7, frames[t, 0], start=bool(starts[t, 0]), end=t == STEPS - 1, headers=bearer)
                for t in range(STEPS)
            ]
    finally:
        server.close()
    np.testing.assert_allclose(streamed, expected, atol=1e-4, rtol=0)
    chained = np.concatenate([head.embeddings, tail.embeddings])
    np.testing.assert_allclose(chained, expected[:, 0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(kserve, expected[:, 0], atol=1e-4, rtol=0)


# flags -> the in-process model's options, and the tolerance relative to the largest |embedding|
RUNTIME_OPTIONS = {
    "bf16": (["--precision", "bf16"], {"precision": "bf16"}, 0.05),
    "fp16": (["--precision", "fp16"], {"precision": "fp16"}, 0.01),
    "compile": (["--compile", "true", "--max-batch-size", "4"], {"compile": True}, 1e-4),
}


@pytest.mark.slow
@pytest.mark.parametrize("option", RUNTIME_OPTIONS)
def test_runtime_options_serve_the_same_model(option: str) -> None:
    """A server started with a precision or compile option: its stream equals the in-process model
    with that option, within the precision's tolerance, and keeps the fp32 weights' identity."""
    flags, options, tolerance = RUNTIME_OPTIONS[option]
    model = InferenceModel(build_model(default_spec()), torch.device("cpu"), **options)  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (STEPS, ENVS, 84, 84, 1), dtype=np.uint8)
    starts = rng.random((STEPS, ENVS)) < 0.25
    expected, _ = model.encode(frames.transpose(0, 1, 4, 2, 3), episode_start=starts)
    server = ServeProcess(*flags, timeout=300)
    try:
        with server.client() as client:
            info = client.info()
            fp32 = InferenceModel(build_model(default_spec()), torch.device("cpu"))
            assert info.weights_hash == fp32.weights_hash  # how it runs is not what it is
            assert (info.precision, info.compiled) == (model.precision, model.compile)
            with client.session(ENVS, pixel_format="GRAY") as session:
                streamed = np.stack([session.step(frames[t], starts[t]) for t in range(STEPS)])
        log = "".join(server.lines)
    finally:
        server.close()
    precision = str(options.get("precision", "fp32"))
    assert f"on cpu ({precision}{', compiled' if options.get('compile') else ''})" in log, log[-2000:]
    np.testing.assert_allclose(streamed, expected, atol=tolerance * np.abs(expected).max(), rtol=0)
