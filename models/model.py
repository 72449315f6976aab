"""The served model: frames -> encoder -> LSTM core -> embeddings, with explicit state.

Data flow, time-major throughout:
    frames uint8 [T, B, C, H, W] -> stack (k frames) -> /255, normalise -> encoder [T*B, F]
    -> core [T, B, F] -> embeddings [T, B, D]
State is a dict of tensors whose dimension 1 is the batch (env) dimension:
    h, c: [num_layers, B, hidden];  frames (only when frame_stack > 1): [k-1, B, C, H, W] uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .core import LSTMCore
from .encoders import build_encoder
from .spec import ModelSpec
from .stacking import stack_frames

__all__ = ["EmbeddingModel", "State", "StateTensorSpec", "build_model"]

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StateTensorSpec:
    """One state tensor's per-env shape (the batch dimension removed) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(str(self.dtype).removeprefix("torch."))


class EmbeddingModel(nn.Module):
    """CNN encoder + LSTM core built from a `ModelSpec`; `out_size` is the embedding size."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = build_encoder(spec.encoder, spec.input)
        self.core = LSTMCore(self.encoder.out_size, spec.core.hidden_size, spec.core.num_layers)
        self.out_size: int = self.core.out_size
        channels = spec.input.stacked_channels
        mean = torch.tensor(spec.input.mean).repeat(channels // len(spec.input.mean))
        std = torch.tensor(spec.input.std).repeat(channels // len(spec.input.std))
        # Folding /255 into the scale keeps normalisation one fused multiply-add.
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, -1, 1, 1), persistent=False)

    def state_specs(self) -> list[StateTensorSpec]:
        core_shape = self.core.state_shape()
        specs = [
            StateTensorSpec("h", core_shape, torch.float32),
            StateTensorSpec("c", core_shape, torch.float32),
        ]
        history = self.spec.input.frame_stack - 1
        if history:
            inp = self.spec.input
            specs.append(
                StateTensorSpec("frames", (history, inp.channels, inp.height, inp.width), torch.uint8)
            )
        return specs

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros: the state at the start of an episode."""
        return {
            s.name: torch.zeros(s.shape[0], batch_size, *s.shape[1:], dtype=s.dtype, device=device)
            for s in self.state_specs()
        }

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """Stacked uint8 frames [N, k*C, H, W] -> encoder features [N, F]."""
        x = torch.addcmul(self.shift, frames.to(self.scale.dtype), self.scale)
        return self.encoder(x.contiguous(memory_format=torch.channels_last))

    def forward(
        self, frames: torch.Tensor, state: State, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, State]:
        """frames uint8 [T, B, C, H, W], state (see module doc), episode_start bool [T, B]
        -> embeddings [T, B, D], new state."""
        steps, batch = episode_start.shape
        stacked, history = self.stack(frames, state, episode_start)
        features = self.features(stacked.flatten(0, 1)).view(steps, batch, -1)
        return self.recur(features, state, episode_start, history)

    def stack(
        self, frames: torch.Tensor, state: State, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Adds the frame-stack history: -> [T, B, k*C, H, W] and the new history (or None)."""
        if "frames" not in state:
            return frames, None
        return stack_frames(frames, state["frames"], episode_start)

    def recur(
        self,
        features: torch.Tensor,
        state: State,
        episode_start: torch.Tensor,
        history: torch.Tensor | None,
    ) -> tuple[torch.Tensor, State]:
        """Runs the core over features [T, B, F]; returns embeddings and the full new state."""
        outputs, (h, c) = self.core(features, (state["h"], state["c"]), episode_start)
        new_state = {"h": h, "c": c}
        if history is not None:
            new_state["frames"] = history
        return outputs, new_state


def build_model(spec: ModelSpec) -> EmbeddingModel:
    """Builds the model with weights drawn from `spec.seed` (reproducible without a checkpoint)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = EmbeddingModel(spec)
    return model.eval()
