"""RL integration: Gymnasium wrappers, imported sb3-contrib and CleanRL agents, the Atari example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ServerThread, serving
from torch import nn

from vidlstm.clients import EncoderClient
from vidlstm.clients.gym import EmbeddingObservation, VectorEmbeddingObservation
from vidlstm.models import (
    InferenceModel,
    ModelSpec,
    PixelFormat,
    build_model,
    checkpoint_bytes,
    default_spec,
    load_model,
    prepare_frames,
)
from vidlstm.service import ServerSettings
from vidlstm.tools.import_cli import import_main

REPO = Path(__file__).resolve().parents[1]


class FrameEnv(gym.Env[np.ndarray, int]):
    """84x84 gray frames with episodes that end at random; records what it returned."""

    observation_space = gym.spaces.Box(0, 255, (84, 84, 1), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, seed: int, end_probability: float = 0.15) -> None:
        self.rng = np.random.default_rng(seed)
        self.end_probability = end_probability
        self.history: list[tuple[np.ndarray, bool]] = []  # (frame, first of an episode)

    def _frame(self, first: bool) -> np.ndarray:
        frame = self.rng.integers(0, 256, (84, 84, 1), dtype=np.uint8)
        self.history.append((frame, first))
        return frame

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self._frame(True), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self._frame(False), 0.0, bool(self.rng.random() < self.end_probability), False, {}


def reference(model: InferenceModel, history: list[tuple[np.ndarray, bool]]) -> np.ndarray:
    frames = prepare_frames(np.stack([f for f, _ in history]), PixelFormat.GRAY, model.model.spec.input)
    starts = np.array([s for _, s in history])[:, None]
    return model.encode(frames[:, None], episode_start=starts)[0][:, 0]


def test_single_env_wrapper(server: ServerThread, model: InferenceModel) -> None:
    inner = FrameEnv(0)
    env = EmbeddingObservation(inner, server.address)
    assert env.observation_space.shape == (256,)
    observations = [env.reset(seed=0)[0]]
    for _ in range(20):
        observation, _, terminated, _, _ = env.step(0)
        observations.append(observation)
        if terminated:
            observations.append(env.reset()[0])
    env.close()
    assert sum(first for _, first in inner.history) > 1  # an episode ended mid-way
    np.testing.assert_allclose(np.stack(observations), reference(model, inner.history), atol=1e-4, rtol=0)


def test_vector_wrapper_resets_state_where_the_new_episode_begins(
    server: ServerThread, model: InferenceModel
) -> None:
    inner = [FrameEnv(i) for i in range(3)]
    envs = VectorEmbeddingObservation(
        gym.vector.SyncVectorEnv([lambda e=e: e for e in inner]), server.address
    )
    assert envs.single_observation_space.shape == (256,)
    steps = [envs.reset(seed=1)[0]]
    for _ in range(25):
        steps.append(envs.step(np.zeros(3, dtype=np.int64))[0])
    envs.close()
    got = np.stack(steps)  # [T, 3, D]
    for index, env in enumerate(inner):
        assert sum(first for _, first in env.history) > 1
        np.testing.assert_allclose(got[:, index], reference(model, env.history), atol=1e-4, rtol=0)
    assert server.live_envs == 0


def test_wrapper_survives_a_server_restart(model: InferenceModel) -> None:
    """After a restart the episode goes on from zero state: the frame after the restart is embedded
    as the first of a new episode, and the steps after it continue from there."""
    first = ServerThread(ServerSettings(port=0), model)
    port = first.running.port
    inner = FrameEnv(4, end_probability=0.0)
    env = EmbeddingObservation(inner, f"127.0.0.1:{port}")
    env.reset()
    env.step(0)
    first.stop()
    second = ServerThread(ServerSettings(port=port), model)
    try:
        with pytest.warns(RuntimeWarning, match="reopened with zero LSTM state"):
            observations = [env.step(0)[0]]
        observations.append(env.step(0)[0])
    finally:
        env.close()
        second.stop()
    after_restart = [(frame, index == 0) for index, (frame, _) in enumerate(inner.history[-2:])]
    expected = reference(model, after_restart)
    np.testing.assert_allclose(np.stack(observations), expected, atol=1e-4, rtol=0)
    continued = reference(model, inner.history)[-2:]  # what the lost state would have given
    assert not np.allclose(np.stack(observations), continued, atol=1e-4)


def _serve(path: Path) -> ServerThread:
    return ServerThread(ServerSettings(port=0), InferenceModel(load_model(path), torch.device("cpu")))


def test_sb3_recurrent_ppo_import_gives_its_lstm_output(tmp_path: Path) -> None:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.policies import BaseModel
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    venv = VecFrameStack(DummyVecEnv([lambda i=i: FrameEnv(10 + i, 0.2) for i in range(3)]), n_stack=4)
    agent = RecurrentPPO("CnnLstmPolicy", venv, n_steps=8, seed=0, policy_kwargs={"lstm_hidden_size": 64})
    agent.save(tmp_path / "agent.zip")
    assert import_main(["sb3", str(tmp_path / "agent.zip"), "--out", str(tmp_path / "imported")]) == 0
    policy = agent.policy.eval()
    server = _serve(tmp_path / "imported" / "model.safetensors")
    observations = venv.reset()
    starts = np.ones(3, dtype=bool)
    state = (torch.zeros(1, 3, 64), torch.zeros(1, 3, 64))
    resets = 0
    try:
        with EncoderClient(server.address) as client, client.session(3, pixel_format="GRAY") as session:
            for _ in range(30):
                served = session.step(observations[..., -1:], starts)  # the newest frame of the stack
                with torch.no_grad():
                    tensor, _ = policy.obs_to_tensor(observations)
                    features = BaseModel.extract_features(policy, tensor, policy.pi_features_extractor)
                    latent, state = policy._process_sequence(
                        features, state, torch.as_tensor(starts, dtype=torch.float32), policy.lstm_actor
                    )
                np.testing.assert_allclose(served, latent.numpy(), atol=1e-5, rtol=0)
                observations, _, dones, _ = venv.step(np.zeros(3, dtype=np.int64))
                starts = dones.astype(bool)
                resets += int(starts.sum())
    finally:
        server.stop()
    assert resets > 0


def _layer_init(layer: nn.Module, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)  # type: ignore[arg-type]
    nn.init.constant_(layer.bias, bias)  # type: ignore[arg-type]
    return layer


class CleanRLAgent(nn.Module):
    """CleanRL ppo_atari_lstm's Agent, as published (84x84 gray, no stack, /255, LSTM 128)."""

    def __init__(self, actions: int = 6) -> None:
        super().__init__()
        self.network = nn.Sequential(
            _layer_init(nn.Conv2d(1, 32, 8, stride=4)),
            nn.ReLU(),
            _layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            _layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            _layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(512, 128)
        for name, param in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            elif "weight" in name:
                nn.init.orthogonal_(param, 1.0)
        self.actor = _layer_init(nn.Linear(128, actions), std=0.01)
        self.critic = _layer_init(nn.Linear(128, 1), std=1)

    def get_states(
        self, x: torch.Tensor, lstm_state: tuple, done: torch.Tensor
    ) -> tuple[torch.Tensor, tuple]:
        hidden = self.network(x / 255.0)
        batch_size = lstm_state[0].shape[1]
        hidden = hidden.reshape((-1, batch_size, self.lstm.input_size))
        done = done.reshape((-1, batch_size))
        new_hidden = []
        for h, d in zip(hidden, done, strict=True):
            h, lstm_state = self.lstm(
                h.unsqueeze(0),
                ((1.0 - d).view(1, -1, 1) * lstm_state[0], (1.0 - d).view(1, -1, 1) * lstm_state[1]),
            )
            new_hidden += [h]
        return torch.flatten(torch.cat(new_hidden), 0, 1), lstm_state


def test_cleanrl_agent_import_gives_its_lstm_output(tmp_path: Path) -> None:
    torch.manual_seed(0)
    agent = CleanRLAgent().eval()
    torch.save(agent.state_dict(), tmp_path / "agent.pt")
    assert import_main(["cleanrl", str(tmp_path / "agent.pt"), "--out", str(tmp_path / "imported")]) == 0
    steps, envs = 20, 2
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (steps, envs, 84, 84, 1), dtype=np.uint8)
    done = rng.random((steps, envs)) < 0.2
    done[0] = True
    with torch.no_grad():
        x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).reshape(steps * envs, 1, 84, 84).float()
        expected, _ = agent.get_states(
            x, (torch.zeros(1, envs, 128), torch.zeros(1, envs, 128)), torch.from_numpy(done).float()
        )
    expected = expected.reshape(steps, envs, 128).numpy()
    server = _serve(tmp_path / "imported" / "model.safetensors")
    try:
        with EncoderClient(server.address) as client, client.session(envs, pixel_format="GRAY") as session:
            served = np.stack([session.step(frames[t], done[t]) for t in range(steps)])
    finally:
        server.stop()
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)


def test_atari_pong_example_runs(server: ServerThread) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "atari_pong.py"),
            "--server",
            server.address,
            "--envs",
            "2",
            "--steps",
            "15",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "2 envs x 15 steps" in result.stdout
    assert "embeddings (2, 256)" in result.stdout


def test_wrappers_name_the_weights_each_observation_ran_on() -> None:
    """The behaviour policy's version, for an off-policy learner: it follows the pushes."""
    served = InferenceModel(build_model(default_spec()), torch.device("cpu"))  # changed by the pushes
    with (
        serving(served, admin_tokens=("admin",)) as server,
        EncoderClient(server.address, token="admin") as admin,
    ):
        env = EmbeddingObservation(FrameEnv(2, end_probability=0), server.address)
        envs = VectorEmbeddingObservation(gym.vector.SyncVectorEnv([lambda: FrameEnv(3)] * 2), server.address)
        assert env.weights is None
        env.reset(seed=0)
        envs.reset(seed=0)
        versions = [(env.weights, envs.weights)]
        admin.push_weights(checkpoint_bytes(build_model(ModelSpec(seed=5))), learner_step=50)
        env.step(0)
        envs.step(np.zeros(2, dtype=np.int64))
        versions.append((env.weights, envs.weights))
        env.close()
        envs.close()
    assert [(a.number, b.number) for a, b in versions] == [(1, 1), (2, 2)]  # type: ignore[union-attr]
    assert versions[1][0].learner_step == 50  # type: ignore[union-attr]
