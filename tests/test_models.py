"""Encoders, the LSTM core's reset semantics, frame stacking and preprocessing, in process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidlstm.models import (
    ENCODERS,
    EncoderSpec,
    FrameError,
    InferenceModel,
    InputSpec,
    LSTMCore,
    ModelSpec,
    PixelFormat,
    Registry,
    build_model,
    default_spec,
    prepare_frames,
)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_gives_time_major_embeddings(name: str) -> None:
    spec = ModelSpec(
        encoder=EncoderSpec(name),
        input=InputSpec(height=64, width=64, grayscale=False, mean=(0.5,), std=(0.25,)),
    )
    model = build_model(spec)
    steps, batch = 3, 2
    frames = torch.randint(0, 256, (steps, batch, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        features = model.features(frames.flatten(0, 1))
        embeddings, state = model(
            frames, model.initial_state(batch), torch.zeros(steps, batch, dtype=torch.bool)
        )
    assert features.shape == (steps * batch, model.encoder.out_size)
    assert embeddings.shape == (steps, batch, model.out_size)
    assert state["h"].shape == (1, batch, spec.core.hidden_size)


def _cleanrl_loop(core: LSTMCore, x: torch.Tensor, state: tuple, done: torch.Tensor) -> tuple:
    """CleanRL ppo_atari_lstm `get_states`, verbatim in spirit: mask by (1 - done), one step at a time."""
    h, c = state
    outputs = []
    for step, d in zip(x, done.float(), strict=True):
        out, (h, c) = core.lstm(
            step.unsqueeze(0), ((1.0 - d).view(1, -1, 1) * h, (1.0 - d).view(1, -1, 1) * c)
        )
        outputs.append(out)
    return torch.cat(outputs), (h, c)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_core_matches_cleanrl_step_loop_with_random_resets(num_layers: int) -> None:
    torch.manual_seed(0)
    core = LSTMCore(16, 32, num_layers).eval()
    steps, batch = 12, 5
    x = torch.randn(steps, batch, 16)
    state = (torch.randn(num_layers, batch, 32), torch.randn(num_layers, batch, 32))
    done = torch.rand(steps, batch) < 0.25
    done[0, 0] = True
    with torch.inference_mode():
        expected, (h_ref, c_ref) = _cleanrl_loop(core, x, state, done)
        out, (h, c) = core(x, state, done)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=1e-5, rtol=0)


def test_episode_start_resets_exactly_the_flagged_envs() -> None:
    torch.manual_seed(1)
    core = LSTMCore(8, 8).eval()
    x = torch.randn(1, 3, 8)
    state = (torch.randn(1, 3, 8), torch.randn(1, 3, 8))
    starts = torch.tensor([[False, True, False]])
    zeros = (torch.zeros(1, 3, 8), torch.zeros(1, 3, 8))
    with torch.inference_mode():
        out, _ = core(x, state, starts)
        from_state, _ = core(x, state, torch.zeros_like(starts))
        from_zero, _ = core(x, zeros, torch.zeros_like(starts))
    assert torch.equal(out[0, 1], from_zero[0, 1])  # reset env saw zero state
    assert torch.equal(out[0, [0, 2]], from_state[0, [0, 2]])  # others kept theirs
    assert not torch.allclose(from_state[0, 1], from_zero[0, 1])  # the reset mattered


def test_model_sequence_equals_step_by_step() -> None:
    model = build_model(ModelSpec())
    steps, batch = 9, 4
    frames = torch.randint(0, 256, (steps, batch, 1, 84, 84), dtype=torch.uint8)
    starts = torch.rand(steps, batch) < 0.3
    with torch.inference_mode():
        whole, final = model(frames, model.initial_state(batch), starts)
        state = model.initial_state(batch)
        stepped = []
        for t in range(steps):
            out, state = model(frames[t : t + 1], state, starts[t : t + 1])
            stepped.append(out)
    torch.testing.assert_close(torch.cat(stepped), whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(state["h"], final["h"], atol=1e-5, rtol=0)


def test_frame_stack_zero_fills_at_episode_start() -> None:
    model = build_model(ModelSpec(input=InputSpec(frame_stack=3)))
    frames = torch.arange(1, 5, dtype=torch.uint8).view(4, 1, 1, 1, 1).expand(4, 1, 1, 84, 84)
    starts = torch.tensor([[True], [False], [True], [False]])
    stacked, history = model.stack(frames, model.initial_state(1), starts)
    firsts = stacked[:, 0, :, 0, 0].tolist()
    assert firsts == [[0, 0, 1], [0, 1, 2], [0, 0, 3], [0, 3, 4]]
    assert history[:, 0, 0, 0, 0].tolist() == [3, 4]
    assert model.encoder.network[0].in_channels == 3


def test_preprocessing_accepts_any_size_and_format() -> None:
    spec = InputSpec()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 210, 160, 3), dtype=np.uint8)
    from_rgb = prepare_frames(rgb, PixelFormat.RGB, spec)
    from_bgr = prepare_frames(np.ascontiguousarray(rgb[..., ::-1]), PixelFormat.BGR, spec)
    assert from_rgb.shape == (2, 1, 84, 84)
    assert np.array_equal(from_rgb, from_bgr)
    color = prepare_frames(rgb, PixelFormat.RGB, InputSpec(height=64, width=48, grayscale=False))
    assert color.shape == (2, 3, 64, 48)


def test_preprocessing_errors_say_what_to_fix() -> None:
    with pytest.raises(FrameError, match="RGB frames need 3 channel"):
        prepare_frames(np.zeros((1, 10, 10, 1), np.uint8), PixelFormat.RGB, InputSpec())
    with pytest.raises(FrameError, match="uint8"):
        prepare_frames(np.zeros((1, 10, 10, 1), np.float32), PixelFormat.GRAY, InputSpec())


def test_registry_fails_loudly() -> None:
    registry: Registry[int] = Registry("widget")
    registry.add("a", lambda: 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.add("a", lambda: 2)
    with pytest.raises(ValueError, match="unknown widget 'b'; known: a"):
        registry.get("b")
    with pytest.raises(ValueError, match="unknown encoder 'vgg'"):
        build_model(ModelSpec(encoder=EncoderSpec("vgg")))
    with pytest.raises(ValueError, match="bad params for encoder 'nature'"):
        build_model(ModelSpec(encoder=EncoderSpec("nature", {"width": 3})))


def test_default_model_is_reproducible() -> None:
    a, b = build_model(ModelSpec()), build_model(ModelSpec())
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    c = build_model(ModelSpec(seed=1))
    assert not torch.equal(a.core.lstm.weight_hh_l0, c.core.lstm.weight_hh_l0)


def test_encode_refuses_frames_not_prepared_for_the_model() -> None:
    """The in-process path names the shape it needs instead of failing inside torch (or, for a
    model that pools, silently embedding frames of another size)."""
    model = InferenceModel(build_model(default_spec()), torch.device("cpu"))
    for frames in (
        np.zeros((1, 1, 3, 84, 84), np.uint8),  # RGB for a gray model
        np.zeros((1, 1, 1, 100, 84), np.uint8),  # not resized
        np.zeros((1, 1, 1, 84, 84), np.float32),  # not uint8
        np.zeros((1, 1, 84, 84), np.uint8),  # no batch dimension
        torch.zeros((1, 1, 1, 84, 84), dtype=torch.uint8),  # a tensor, not a numpy array
    ):
        with pytest.raises(ValueError, match=r"frames must be a numpy uint8 array \[T, B, 1, 84, 84\]"):
            model.encode(frames)  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["compile", "cuda_graphs"])
def test_runtime_switches_must_be_booleans(option: str) -> None:
    with pytest.raises(TypeError, match=f"{option} must be True or False, got 'false'"):
        InferenceModel(build_model(default_spec()), torch.device("cpu"), **{option: "false"})  # type: ignore[arg-type]


def test_every_lazily_loaded_name_is_exported_and_resolves() -> None:
    """vidlstm.models lists its names three times (type-checking imports, __all__, the lazy table):
    the table and __all__ must agree, and each name must load from the module the table names."""
    import vidlstm.models as models

    assert sorted(models._MODULES) == sorted(models.__all__)
    for name in models.__all__:
        assert getattr(models, name) is not None, name
