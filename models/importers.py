"""Importing trained recurrent agents: sb3-contrib RecurrentPPO (CnnLstmPolicy) and CleanRL
ppo_atari_lstm. The encoder (Nature CNN) and the actor's LSTM become a vidlstm model whose
embeddings are the library's LSTM output for the same frames and episode starts.

Neither library is needed: SB3's zip holds the policy as a plain state dict (`policy.pth`, read with
`weights_only=True`); the pickled parts of the zip are never opened. Sizes come from the weights.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch

from .checkpoint import CheckpointError, read_state_dict
from .model import EmbeddingModel, build_model
from .spec import CoreSpec, EncoderSpec, InputSpec, ModelSpec

__all__ = ["from_cleanrl", "from_sb3"]

# Nature CNN layers: (vidlstm name, sb3 name, cleanrl name)
_CNN_LAYERS = (
    ("encoder.network.0", "cnn.0", "network.0"),
    ("encoder.network.2", "cnn.2", "network.2"),
    ("encoder.network.4", "cnn.4", "network.4"),
    ("encoder.linear.0", "linear.0", "network.7"),
)


def from_sb3(path: Path, *, height: int = 84, width: int = 84, grayscale: bool = True) -> EmbeddingModel:
    """RecurrentPPO zip -> model: features extractor + `lstm_actor`, SB3's preprocessing
    (uint8 / 255, the frame stack the first conv was trained on, zero-filled at resets)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("policy.pth") as file:
            state = torch.load(io.BytesIO(file.read()), map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise CheckpointError(f"{path} is not an SB3 model zip with a policy.pth: {error}") from None
    prefix = "features_extractor." if "features_extractor.cnn.0.weight" in state else "pi_features_extractor."
    if f"{prefix}cnn.0.weight" not in state or "lstm_actor.weight_ih_l0" not in state:
        raise CheckpointError(f"{path}: not a CnnLstmPolicy (need a NatureCNN extractor and lstm_actor)")
    weights = {
        f"{ours}.{kind}": state[f"{prefix}{sb3}.{kind}"]
        for ours, sb3, _ in _CNN_LAYERS
        for kind in ("weight", "bias")
    }
    weights.update(_lstm(state, "lstm_actor."))
    return _build(weights, f"sb3:{path.stem}", height, width, grayscale)


def from_cleanrl(path: Path, *, height: int = 84, width: int = 84, grayscale: bool = True) -> EmbeddingModel:
    """CleanRL ppo_atari_lstm `Agent.state_dict()` -> model: `network` + `lstm` (84x84 gray, /255)."""
    state = read_state_dict(path)
    if "network.0.weight" not in state or "lstm.weight_ih_l0" not in state:
        raise CheckpointError(f"{path}: not a CleanRL ppo_atari_lstm Agent state dict (network.*, lstm.*)")
    weights = {
        f"{ours}.{kind}": state[f"{clean}.{kind}"]
        for ours, _, clean in _CNN_LAYERS
        for kind in ("weight", "bias")
    }
    weights.update(_lstm(state, "lstm."))
    return _build(weights, f"cleanrl:{path.stem}", height, width, grayscale)


def _lstm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"core.lstm.{k.removeprefix(prefix)}": v for k, v in state.items() if k.startswith(prefix)}


def _build(
    weights: dict[str, torch.Tensor], name: str, height: int, width: int, grayscale: bool
) -> EmbeddingModel:
    in_channels = weights["encoder.network.0.weight"].shape[1]
    channels = 1 if grayscale else 3
    if in_channels % channels:
        raise CheckpointError(
            f"first conv takes {in_channels} channels, not a stack of {channels}-channel frames"
        )
    layers = sum(1 for k in weights if k.startswith("core.lstm.weight_ih_l"))
    spec = ModelSpec(
        name=name,
        encoder=EncoderSpec("nature", {"features": weights["encoder.linear.0.weight"].shape[0]}),
        core=CoreSpec(hidden_size=weights["core.lstm.weight_hh_l0"].shape[1], num_layers=layers),
        input=InputSpec(height=height, width=width, grayscale=grayscale, frame_stack=in_channels // channels),
    )
    model = build_model(spec)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"weights do not fit a {height}x{width} Nature CNN + LSTM: {error}") from None
    return model.eval()
