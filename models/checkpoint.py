"""Checkpoints: safetensors weights with the spec inside, or a spec file + torch state dict.

Layouts accepted by `load_model`:
- `model.safetensors` whose metadata holds the spec (what `save_checkpoint` writes);
- a folder with `spec.json`/`spec.yaml` and `model.safetensors` or `model.pt`;
- any weights file plus an explicit `spec`.
Torch files are read with `weights_only=True`: a pickle carrying code is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import secrets
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .model import EmbeddingModel, build_model
from .spec import ModelSpec

__all__ = [
    "CheckpointError",
    "checkpoint_bytes",
    "checkpoint_learner_step",
    "learner_step_in",
    "load_model",
    "read_state_dict",
    "save_checkpoint",
    "tensors_hash",
    "weights_hash",
]

SPEC_METADATA_KEY = "vidlstm.spec"
LEARNER_STEP_METADATA_KEY = "vidlstm.learner_step"
SPEC_FILES = ("spec.json", "spec.yaml", "spec.yml")
WEIGHT_FILES = ("model.safetensors", "model.pt", "model.pth")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which file and why."""


def checkpoint_bytes(model: EmbeddingModel, *, learner_step: int | None = None) -> bytes:
    """The model as a `.safetensors` file's bytes, spec (and the learner's step, if given) in its
    metadata: what `save_checkpoint` writes and what `PushWeights` takes."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {SPEC_METADATA_KEY: model.spec.to_json()}
    if learner_step is not None:
        metadata[LEARNER_STEP_METADATA_KEY] = str(int(learner_step))
    return save(tensors, metadata=metadata)


def save_checkpoint(model: EmbeddingModel, path: str | Path, *, learner_step: int | None = None) -> Path:
    """Writes `path` (a `.safetensors` file, spec in its metadata) atomically: written beside it, then
    renamed over it, so a server watching `path` (--watch-weights) never reads half a file.

    The file gets mode 0666 less the umask, like any file a tool writes, so a container's non-root
    user can read a mounted checkpoint (safetensors' own `save_file` and mkstemp make it 0600)."""
    path = Path(path)
    data = checkpoint_bytes(model, learner_step=learner_step)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_model(path: str | Path, spec: ModelSpec | str | Path | None = None) -> EmbeddingModel:
    """Builds the model a checkpoint describes and loads its weights (strictly: no missing keys)."""
    weights_path, spec = _resolve(Path(path), spec)
    model = build_model(spec)
    try:
        model.load_state_dict(read_state_dict(weights_path))
    except RuntimeError as error:
        raise CheckpointError(f"{weights_path} does not fit spec {spec.name!r}: {error}") from None
    return model.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads tensors from `.safetensors`, or a torch state dict with `weights_only=True`."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as error:
            raise CheckpointError(f"{path} is not a valid safetensors file: {error}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise CheckpointError(
            f"refusing to load {path}: not a plain tensor state dict ({error}); "
            "save weights with torch.save(model.state_dict()) or as .safetensors"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} must hold a dict of tensor names to tensors")
    return state


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over parameter names, dtypes, shapes and bytes: identifies the weights served."""
    return tensors_hash(model.state_dict())


def tensors_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """`weights_hash` of a state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        cpu = tensor.detach().cpu().contiguous()
        digest.update(hashed_tensor_header(name, cpu))
        digest.update(cpu.reshape(-1).view(torch.uint8).numpy().data)  # a memoryview: no copy
    return digest.hexdigest()


def hashed_tensor_header(name: str, tensor: torch.Tensor) -> bytes:
    """What the weights hash takes of a tensor before its bytes (little-endian, row-major)."""
    return f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode()


def _resolve(path: Path, spec: ModelSpec | str | Path | None) -> tuple[Path, ModelSpec]:
    if not path.exists():
        raise CheckpointError(f"model {path} does not exist (a weights file or a checkpoint folder)")
    if path.is_dir():
        weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path} holds none of {', '.join(WEIGHT_FILES)}")
        if spec is None:
            spec = next((path / n for n in SPEC_FILES if (path / n).is_file()), None)
        path = weights
    if isinstance(spec, (str, Path)):
        return path, ModelSpec.load(spec)
    if spec is None:
        spec = _embedded_spec(path)
    return path, spec


def learner_step_in(metadata: Mapping[str, str]) -> int | None:
    """The learner step a checkpoint's metadata names (None: none); ValueError unless an int64."""
    if LEARNER_STEP_METADATA_KEY not in metadata:
        return None
    text = metadata[LEARNER_STEP_METADATA_KEY]
    try:
        step = int(text)
    except ValueError:
        raise ValueError(f"the file's {LEARNER_STEP_METADATA_KEY} is not an integer: {text!r}") from None
    if not -(2**63) <= step < 2**63:
        raise ValueError(f"the file's {LEARNER_STEP_METADATA_KEY} {step} does not fit in an int64")
    return step


def checkpoint_learner_step(path: str | Path) -> int | None:
    """The learner step a checkpoint (file or folder) was saved at, if it says."""
    weights, _ = _resolve(Path(path), ModelSpec())  # the spec is not read here
    if weights.suffix != ".safetensors":
        return None
    try:
        with safe_open(weights, framework="pt") as reader:
            return learner_step_in(reader.metadata() or {})
    except (SafetensorError, ValueError) as error:
        raise CheckpointError(f"{weights}: {error}") from None


def _embedded_spec(path: Path) -> ModelSpec:
    if path.suffix == ".safetensors" and path.is_file():
        try:
            with safe_open(path, framework="pt") as reader:
                metadata = reader.metadata() or {}
        except SafetensorError as error:
            raise CheckpointError(f"{path} is not a valid safetensors file: {error}") from None
        if SPEC_METADATA_KEY in metadata:
            return ModelSpec.from_dict(json.loads(metadata[SPEC_METADATA_KEY]))
    raise CheckpointError(f"{path} carries no model spec; pass one (a spec.json or spec.yaml file)")
