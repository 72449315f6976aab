"""Running a model for inference: device, threads, precision, compilation, eval + inference mode, a
weights hash.

Precision and compilation are how the model runs, not what it is: `weights_hash` is always taken
from the fp32 weights, so state, checkpoints and video outputs stay tied to the model itself.
Only the CNN runs in bf16/fp16; the LSTM core and its state stay fp32 (small, and recurrent error
would build up step after step).
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import checkpoint_learner_step, load_model, weights_hash
from .live_weights import StagedWeights, TensorLayout, WeightsVersion, layout_of, stage_weights
from .model import EmbeddingModel, State, StateTensorSpec, build_model
from .spec import InputSpec, ModelSpec, default_spec

__all__ = [
    "PRECISIONS",
    "InferenceModel",
    "batch_bucket",
    "load_inference_model",
    "select_device",
    "set_threads",
]

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(name: str = "auto") -> torch.device:
    """ "auto" picks CUDA when present, else CPU; anything else must name an available device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def set_threads(threads: int | None) -> None:
    """Caps torch's intra-op threads (None keeps torch's default of one per core)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def batch_bucket(count: int) -> int:
    """The padded CNN batch for `count` frames: the next power of two. Compiled graphs and cuDNN's
    autotuned kernels are made per input shape; a handful of shapes, all met during warm-up, keep
    that work out of the requests."""
    return 1 << max(count - 1, 0).bit_length()


@dataclass
class InferenceModel:
    """A model on its device in eval mode, with what clients need to know about it.

    `precision` (fp32 | bf16 | fp16) is the CNN's arithmetic; `compile` runs the CNN through
    `torch.compile`. Both pad the CNN batch to `batch_bucket` sizes, as CUDA does (for cuDNN's
    autotuning), so `warm_up` meets every shape a server will see. On CUDA, `cuda_graphs` (unless
    compiled) captures the CNN once per batch bucket during warm-up and replays it: one launch
    instead of one per layer. Off by default: served, the default model's batches took no less time
    with it (README, GPU table), the engine's other work dominating.

    New weights may be installed while it serves (`stage_weights`, then `install_weights` between
    batches); compiled, only with `live_weights`, which has the CNN take its weights as graph inputs
    instead of frozen constants. `version` names the weights serving; `lineage` is the hash of the
    weights it started with.
    """

    model: EmbeddingModel
    device: torch.device
    precision: str = "fp32"
    compile: bool = False
    cuda_graphs: bool = False
    live_weights: bool = False
    learner_step: int | None = None  # of the weights it starts with (a checkpoint's metadata may say)
    weights_hash: str = field(init=False)
    lineage: str = field(init=False)
    version: WeightsVersion = field(init=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        for name in ("compile", "cuda_graphs", "live_weights"):
            if not isinstance(getattr(self, name), bool):  # "false" would be truthy
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        # Its own copy: moving, casting, compiling and new weights must not change the caller's module
        # (a learner that evaluates its model here keeps training it).
        self.model = copy.deepcopy(self.model)
        self.weights_hash = weights_hash(self.model)  # of the fp32 weights, before any cast
        self.lineage = self.weights_hash
        self.version = WeightsVersion(1, self.weights_hash, self.learner_step)
        self._layout: TensorLayout = layout_of(self.model.state_dict())  # fp32: what a push must match
        # channels_last: oneDNN's NHWC convolutions, ~1.3x faster for resnet18 on CPU here.
        self.model = self.model.to(self.device).to(memory_format=torch.channels_last).eval()
        self._cast_encoder(PRECISIONS[self.precision])
        self._pad = self.compile or self.device.type == "cuda"
        self._graphs: dict[int, _GraphedCNN] = {}
        self._graph_pool: torch.cuda._POOL_HANDLE | None = None  # shared by every captured size
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # padded batches: a few shapes, each tuned once
        if self.compile:
            self._compile_encoder()
        # Where new weights go: the model's own tensors, found once (state_dict() makes a torch call
        # per tensor, and staging under load pays for each one).
        self._targets: dict[str, torch.Tensor] = self.model.state_dict()

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def input_spec(self) -> InputSpec:
        return self.model.spec.input

    @property
    def out_size(self) -> int:
        return self.model.out_size

    @property
    def state_specs(self) -> list[StateTensorSpec]:
        return self.model.state_specs()

    def initial_state(self, batch_size: int) -> State:
        return self.model.initial_state(batch_size, self.device)

    def warm_up(self, max_batch_size: int = 8) -> None:
        """Runs every CNN batch shape a server with `max_batch_size` will use (one when nothing is
        padded), so compiling and autotuning happen before the first request, not during it.
        Frames as a client's arrive, unstacked: the model stacks them itself."""
        spec = self.input_spec
        eager = {min(max_batch_size, 8)}  # enough for the kernels' and the allocator's lazy setup
        sizes = {batch_bucket(n) for n in range(1, max_batch_size + 1)} if self._pad else eager
        for size in sorted(sizes):
            self.encode(np.zeros((1, size, spec.channels, spec.height, spec.width), np.uint8))
        if self.device.type == "cuda" and self.cuda_graphs and not self.compile:
            for size in sorted(sizes):
                self._capture(size)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """Stacked uint8 frames [N, k*C, H, W] on the device -> float32 features [N, F]."""
        count = frames.shape[0]
        graphed = self._graphs.get(batch_bucket(count)) if self._pad else None
        if graphed is not None:
            return graphed(frames)
        if self._pad and batch_bucket(count) != count:
            padding = frames.new_zeros(batch_bucket(count) - count, *frames.shape[1:])
            frames = torch.cat([frames, padding])
        return self.model.features(frames)[:count].float()

    @torch.inference_mode()
    def _capture(self, size: int) -> None:
        """The CNN over `size` frames as a CUDA graph (after warm-up ran that size: cuDNN is tuned);
        all sizes share one memory pool."""
        spec = self.input_spec
        channels = spec.channels * spec.frame_stack
        frames = torch.zeros(size, channels, spec.height, spec.width, dtype=torch.uint8, device=self.device)
        side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.model.features(frames)  # the capture needs the lazy setup done, off the main stream
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            features = self.model.features(frames)
        self._graphs[size] = _GraphedCNN(graph, frames, features)

    def stack(
        self, frames: torch.Tensor, state: State, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """See `EmbeddingModel.stack`."""
        return self.model.stack(frames, state, episode_start)

    def recur(
        self, features: torch.Tensor, state: State, episode_start: torch.Tensor, history: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        """See `EmbeddingModel.recur`."""
        return self.model.recur(features, state, episode_start, history)

    @torch.inference_mode()
    def encode(
        self, frames: np.ndarray, state: State | None = None, episode_start: np.ndarray | None = None
    ) -> tuple[np.ndarray, State]:
        """Prepared uint8 frames [T, B, C, H, W] -> embeddings float32 [T, B, D], final state.

        The plain in-process path: what every served path must reproduce.
        """
        self._check_frames(frames)
        steps, batch = frames.shape[:2]
        if state is None:
            state = self.initial_state(batch)
        state = {k: v.to(self.device) for k, v in state.items()}
        starts = np.zeros((steps, batch), bool) if episode_start is None else episode_start
        starts_t = torch.from_numpy(np.asarray(starts, dtype=bool)).to(self.device)
        frames_t = torch.from_numpy(np.require(frames, requirements=["C", "W"])).to(self.device)
        stacked, history = self.stack(frames_t, state, starts_t)
        features = self.features(stacked.flatten(0, 1)).view(steps, batch, -1)
        embeddings, state = self.recur(features, state, starts_t, history)
        return embeddings.cpu().numpy(), state

    def stage_weights(self, data: bytes, learner_step: int | None = None) -> StagedWeights:
        """Checks new weights (a `.safetensors` file's bytes) against this model and puts them on its
        device in its precision; any thread. Raises `WeightsError` (`ArchitectureMismatchError` for weights
        of another architecture or input) and leaves the model as it was."""
        if self.compile and not self.live_weights:
            raise RuntimeError("compiled without live_weights, the CNN's weights are frozen into its graph")
        return stage_weights(
            data,
            spec=self.spec,
            layout=self._layout,
            targets=self._targets,
            learner_step=learner_step,
        )

    @torch.no_grad()
    def install_weights(self, staged: StagedWeights) -> WeightsVersion:
        """Copies staged weights into the model in place; on the model thread, between two batches
        (a batch never mixes weights). Returns the new version."""
        names = list(staged.tensors)
        torch._foreach_copy_([self._targets[n] for n in names], [staged.tensors[n] for n in names])
        self.weights_hash = staged.weights_hash
        self.version = WeightsVersion(self.version.number + 1, staged.weights_hash, staged.learner_step)
        return self.version

    def _check_frames(self, frames: np.ndarray) -> None:
        spec = self.input_spec
        want = [spec.channels, spec.height, spec.width]
        if (
            not isinstance(frames, np.ndarray)
            or frames.dtype != np.uint8
            or frames.ndim != 5
            or list(frames.shape[2:]) != want
        ):
            raise ValueError(
                f"frames must be a numpy uint8 array [T, B, {', '.join(map(str, want))}] (prepare_frames "
                f"makes them from images of any size), got {type(frames).__name__} {frames.dtype} "
                f"{list(frames.shape)}"
            )

    def _cast_encoder(self, dtype: torch.dtype) -> None:
        """The CNN's weights in `dtype`; its input is cast on the way in (normalisation stays
        fp32) and its features back to fp32 on the way out, for the LSTM."""
        if dtype == torch.float32:
            return
        if self.device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ValueError(f"{self.device} has no bf16 support; use precision fp16 or fp32")
        encoder = self.model.encoder.to(dtype)
        encoder.register_forward_pre_hook(lambda _module, args: (args[0].to(dtype),))
        encoder.register_forward_hook(lambda _module, _args, output: output.float())

    def _compile_encoder(self) -> None:
        """The CNN through torch.compile, frozen (weights as constants: oneDNN prepacks them on
        CPU) unless its weights may change (`live_weights`). On CPU one static graph per batch
        bucket: measured here, a graph with a dynamic batch ran slower than eager mode. On CUDA one
        graph with a dynamic batch (cuDNN runs the convolutions either way). Normalisation stays
        outside: frozen, it hit an Inductor bug."""
        _check_compiler(self.device)
        buckets = 16  # powers of two up to 32768 frames: each CPU bucket is one graph, none evicted
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, buckets)
        dynamic = None if self.device.type == "cuda" else False
        self.model.encoder.compile(dynamic=dynamic, options={"freezing": not self.live_weights})


@dataclass(frozen=True)
class _GraphedCNN:
    """A captured CNN call: its static input and output buffers."""

    graph: torch.cuda.CUDAGraph
    frames: torch.Tensor  # uint8 [bucket, k*C, H, W]
    features: torch.Tensor  # [bucket, F], in the CNN's precision

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [n <= bucket, ...] -> float32 features [n, F], a copy: the next replay of this
        bucket overwrites the static output (the engine may call it twice in one batch)."""
        count = frames.shape[0]
        self.frames[:count].copy_(frames)  # rows past `count` hold stale frames: their output is unread
        self.graph.replay()
        return self.features[:count].to(torch.float32, copy=True)


def _check_compiler(device: torch.device) -> None:
    """torch.compile writes C++ (CPU kernels) or builds Triton's launcher with a C compiler (CUDA)."""
    if device.type == "cuda":
        names, kind = (os.environ.get("CC", "cc"), "gcc", "clang"), "C"
    else:
        names, kind = (os.environ.get("CXX", "c++"), "g++", "clang++"), "C++"
    if not any(shutil.which(name) for name in names):
        raise ValueError(
            f"compile on {device.type} needs a {kind} compiler ({', '.join(names)}) on PATH, and there is "
            "none (the slim container image has none); install one (apt-get install g++) or run without "
            "compile"
        )


def load_inference_model(
    *,
    model: Path | None = None,
    spec: Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    precision: str = "fp32",
    compile: bool = False,
    cuda_graphs: bool = False,
    live_weights: bool = False,
) -> InferenceModel:
    """The model the server and the tools run: a checkpoint (`model`; `spec` for weights that carry
    none), else the seeded model of `spec`, else the default model; on `device`, with `threads` torch
    threads (None: torch's default), its CNN in `precision`, compiled when `compile`, captured in
    CUDA graphs on CUDA when `cuda_graphs` (and not compiled), ready for new weights while it serves
    when `live_weights`."""
    set_threads(threads)
    target = select_device(device)
    if model is not None:
        built, step = load_model(model, spec), checkpoint_learner_step(model)
    else:
        built, step = build_model(default_spec() if spec is None else ModelSpec.load(spec)), None
    return InferenceModel(built, target, precision, compile, cuda_graphs, live_weights, step)
