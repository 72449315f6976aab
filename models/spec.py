"""The model spec: everything needed to rebuild a model and feed it frames, as plain data.

A spec round-trips through JSON or YAML and travels with every checkpoint, so a served model
always knows its preprocessing (torchvision's "transforms ship with the weights").
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "CoreSpec",
    "EncoderSpec",
    "InputSpec",
    "ModelSpec",
    "PixelFormat",
    "default_spec",
]


class PixelFormat(StrEnum):
    """Channel layout of incoming uint8 frames, [H, W, C]."""

    RGB = "RGB"
    BGR = "BGR"
    GRAY = "GRAY"

    @property
    def channels(self) -> int:
        return 1 if self is PixelFormat.GRAY else 3


@dataclass(frozen=True)
class InputSpec:
    """What the encoder sees: frames resized to height x width, gray or RGB, scaled, stacked.

    Pixels become `(x / 255 - mean) / std` per channel; `frame_stack` > 1 concatenates the last
    frames on the channel axis, zero-filled at an episode start (SB3 VecFrameStack semantics).
    """

    height: int = 84
    width: int = 84
    grayscale: bool = True
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    frame_stack: int = 1
    # "area": box filter (OpenCV INTER_AREA, as Atari wrappers use; large downscales halve first),
    # or "linear" (bilinear: fastest, aliases on large downscales).
    resize: str = "area"

    def __post_init__(self) -> None:
        if self.resize not in ("area", "linear"):
            raise ValueError(f"resize must be 'area' or 'linear', got {self.resize!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if not 8 <= value <= 4096:
                raise ValueError(f"input {name} must be in [8, 4096], got {value}")
        if not 1 <= self.frame_stack <= 64:
            raise ValueError(f"frame_stack must be in [1, 64], got {self.frame_stack}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            object.__setattr__(self, name, tuple(float(v) for v in values))
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"{name} needs 1 or {self.channels} values for this input, got {len(values)}"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")

    @property
    def channels(self) -> int:
        """Channels of one preprocessed frame (before stacking)."""
        return 1 if self.grayscale else 3

    @property
    def stacked_channels(self) -> int:
        return self.channels * self.frame_stack


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder registry name plus its keyword arguments (see `vidlstm.models.encoders`)."""

    name: str = "nature"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CoreSpec:
    """The recurrent core: an LSTM with `num_layers` layers of `hidden_size` units."""

    hidden_size: int = 256
    num_layers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.hidden_size <= 16384:
            raise ValueError(f"hidden_size must be in [1, 16384], got {self.hidden_size}")
        if not 1 <= self.num_layers <= 16:
            raise ValueError(f"num_layers must be in [1, 16], got {self.num_layers}")


@dataclass(frozen=True)
class ModelSpec:
    """Encoder + core + input preprocessing + seed (the seed makes weightless models reproducible)."""

    name: str = "default"
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    core: CoreSpec = field(default_factory=CoreSpec)
    input: InputSpec = field(default_factory=InputSpec)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        _reject_unknown_keys(cls, data, "model spec")
        parts: dict[str, Any] = {}
        for key, part_cls in (("encoder", EncoderSpec), ("core", CoreSpec), ("input", InputSpec)):
            if key in data:
                _reject_unknown_keys(part_cls, data[key], f"model spec '{key}'")
                parts[key] = part_cls(**data[key])
        scalars = {k: v for k, v in data.items() if k in ("name", "seed")}
        return cls(**scalars, **parts)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        """Writes JSON, or YAML when the file name ends in .yaml/.yml."""
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=True))
        else:
            path.write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a model spec must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)


def _reject_unknown_keys(cls: type, data: object, what: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown keys in {what}: {unknown}; expected some of {sorted(known)}")


def default_spec() -> ModelSpec:
    """The model served when none is given: seeded Nature CNN (84x84 gray) + LSTM(512 -> 256)."""
    return ModelSpec()
