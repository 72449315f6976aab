"""Specs and checkpoints: round trips give identical models; unsafe or mismatched files are refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from vidlstm.models import (
    CheckpointError,
    CoreSpec,
    EncoderSpec,
    InputSpec,
    ModelSpec,
    build_model,
    load_model,
    save_checkpoint,
    weights_hash,
)

SPEC = ModelSpec(
    name="impala-rgb",
    encoder=EncoderSpec("impala", {"channels": [8, 16], "features": 64}),
    core=CoreSpec(hidden_size=32, num_layers=2),
    input=InputSpec(
        height=48, width=40, grayscale=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), frame_stack=2
    ),
    seed=7,
)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_spec_round_trips(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"spec{suffix}"
    SPEC.save(path)
    assert ModelSpec.load(path) == SPEC


def test_spec_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match=r"unknown keys in model spec 'core': \['hiden_size'\]"):
        ModelSpec.from_dict({"core": {"hiden_size": 3}})
    with pytest.raises(ValueError, match="frame_stack must be in"):
        InputSpec(frame_stack=0)


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (4, 2, 3, 48, 40), dtype=torch.uint8, generator=generator)
    starts = torch.tensor([[True, False], [False, False], [False, True], [False, False]])
    with torch.inference_mode():
        return model(frames, model.initial_state(2), starts)[0]


def _perturbed() -> torch.nn.Module:
    model = build_model(SPEC)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)  # so weights differ from what the seed alone gives
    return model


def test_safetensors_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _perturbed()
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    loaded = load_model(path)
    assert loaded.spec == SPEC
    assert weights_hash(loaded) == weights_hash(model) != weights_hash(build_model(SPEC))
    assert torch.equal(_outputs(loaded), _outputs(model))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left


def test_torch_state_dict_with_spec_file(tmp_path: Path) -> None:
    model = _perturbed()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    SPEC.save(tmp_path / "spec.yaml")
    assert torch.equal(_outputs(load_model(tmp_path)), _outputs(model))


class _Payload:
    def __reduce__(self) -> tuple:
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weight": _Payload()}, protocol=2))
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model(path, SPEC)


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path: Path) -> None:
    path = save_checkpoint(build_model(ModelSpec()), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not fit spec"):
        load_model(path, SPEC)
    torch.save(build_model(SPEC).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="carries no model spec"):
        load_model(tmp_path / "bare.pt")


def test_weights_hash_covers_backbones_with_integer_buffers() -> None:
    """BatchNorm's 0-dim int64 `num_batches_tracked` must hash like any other tensor."""
    spec = ModelSpec(encoder=EncoderSpec("resnet18"), input=InputSpec(height=32, width=32, grayscale=False))
    model = build_model(spec)
    before = weights_hash(model)
    model.encoder.network.bn1.num_batches_tracked += 1
    assert weights_hash(model) != before
