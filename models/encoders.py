"""Frame encoders: one preprocessed frame [N, C, H, W] float -> feature vector [N, out_size].

Every encoder is built from the model's `InputSpec` plus keyword params and reports `out_size`,
from which the core is built (never a hard-coded width).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .registry import Registry
from .spec import EncoderSpec, InputSpec

__all__ = [
    "ENCODERS",
    "Encoder",
    "ImpalaCNN",
    "NatureCNN",
    "TorchvisionBackbone",
    "build_encoder",
    "encoder_params",
]


class Encoder(nn.Module):
    """Base of every encoder: frames [N, C, H, W] float -> features [N, out_size]."""

    out_size: int


ENCODERS: Registry[Encoder] = Registry("encoder")


def build_encoder(spec: EncoderSpec, input_spec: InputSpec) -> Encoder:
    """Builds the registered encoder `spec.name` for frames described by `input_spec`."""
    factory = ENCODERS.get(spec.name)
    try:
        return factory(input_spec, **spec.params)
    except TypeError as error:  # unknown or missing keyword params
        raise ValueError(f"bad params for encoder {spec.name!r}: {error}") from None


def encoder_params(spec: EncoderSpec) -> dict[str, Any]:
    """`spec.params` with the encoder's defaults filled in and lists as tuples: {} and
    {"features": 512} name one Nature CNN."""
    signature = inspect.signature(ENCODERS.get(spec.name))
    try:
        bound = signature.bind(None, **spec.params)  # None stands for the input spec
    except TypeError as error:
        raise ValueError(f"bad params for encoder {spec.name!r}: {error}") from None
    bound.apply_defaults()
    params: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            params.update(value)  # a factory taking **params passes them on as they are
        else:
            params[name] = value
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def _flat_size(layers: nn.Module, input_spec: InputSpec) -> int:
    probe = torch.zeros(1, input_spec.stacked_channels, input_spec.height, input_spec.width)
    with torch.no_grad():
        return int(layers(probe).shape[1])


@ENCODERS.register("nature")
class NatureCNN(Encoder):
    """The DQN "Nature" CNN (Mnih et al. 2015) as in CleanRL and SB3: 3 convs -> Linear -> ReLU."""

    def __init__(self, input_spec: InputSpec, *, features: int = 512) -> None:
        super().__init__()
        if min(input_spec.height, input_spec.width) < 36:
            raise ValueError(f"nature encoder needs frames of at least 36x36, got {input_spec}")
        self.network = nn.Sequential(
            nn.Conv2d(input_spec.stacked_channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.linear = nn.Sequential(nn.Linear(_flat_size(self.network, input_spec), features), nn.ReLU())
        self.out_size = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.network(x))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class _ImpalaStage(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.MaxPool2d(3, stride=2, padding=1),
            _ResidualBlock(out_channels),
            _ResidualBlock(out_channels),
        )


@ENCODERS.register("impala")
class ImpalaCNN(Encoder):
    """The IMPALA ResNet CNN (Espeholt et al. 2018): conv stages of residual blocks -> Linear."""

    def __init__(
        self,
        input_spec: InputSpec,
        *,
        channels: tuple[int, ...] | list[int] = (16, 32, 32),
        features: int = 256,
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        in_channels = input_spec.stacked_channels
        for out_channels in channels:
            stages.append(_ImpalaStage(in_channels, out_channels))
            in_channels = out_channels
        self.network = nn.Sequential(*stages, nn.ReLU(), nn.Flatten())
        self.linear = nn.Sequential(nn.Linear(_flat_size(self.network, input_spec), features), nn.ReLU())
        self.out_size = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.network(x))


class TorchvisionBackbone(Encoder):
    """A torchvision classifier with its head removed, as a feature extractor.

    `weights_path` loads a local state dict of the full classifier (e.g. torchvision's released
    `.pth`, or a `.safetensors`) before the head is dropped; nothing is ever downloaded.
    Gray input is repeated to the 3 channels these networks expect.
    """

    def __init__(self, name: str, input_spec: InputSpec, *, weights_path: str | None = None) -> None:
        super().__init__()
        if input_spec.stacked_channels not in (1, 3):
            raise ValueError(
                f"{name} takes one gray or RGB frame; got frame_stack={input_spec.frame_stack} "
                f"with {input_spec.channels} channel(s)"
            )
        import torchvision

        network = torchvision.models.get_model(name, weights=None)
        if weights_path is not None:
            from .checkpoint import read_state_dict

            network.load_state_dict(read_state_dict(Path(weights_path)))
        _drop_classifier_head(network, name)
        self.network = network
        self.gray_input = input_spec.stacked_channels == 1
        self.network.eval()  # batch norm statistics for the probe below
        self.out_size = _flat_size(self, input_spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gray_input:
            x = x.expand(-1, 3, -1, -1)
        return torch.flatten(self.network(x), 1)


def _drop_classifier_head(network: nn.Module, name: str) -> None:
    for head in ("fc", "classifier", "heads"):
        if isinstance(getattr(network, head, None), nn.Module):
            setattr(network, head, nn.Identity())
            return
    raise ValueError(f"don't know where the classifier head of {name!r} is")


TORCHVISION_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",  # the one with offline ImageNet weights: `vidlstm models fetch mobilenet_v2`
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
)


def _backbone_factory(name: str) -> Any:
    def build(input_spec: InputSpec, **params: Any) -> TorchvisionBackbone:
        return TorchvisionBackbone(name, input_spec, **params)

    return build


for _name in TORCHVISION_BACKBONES:
    ENCODERS.add(_name, _backbone_factory(_name))
