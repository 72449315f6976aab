"""The worker side of `encode-video --ray`: a Ray Data actor that loads the model once (on its GPU when
it was given one) and encodes whole videos, one per call, through the local run's own pipeline (a
decoder process feeding the model), so a video's LSTM state never leaves the worker and the outputs
are the local run's. It writes each output where the driver planned it (a folder every node sees)
and returns a small record only. Nothing of Ray is imported here: Ray Data calls it with rows."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .decoders import DecodeOptions
from .plan import Task
from .writer import OutputWriter

if TYPE_CHECKING:
    from vidlstm.models import InferenceModel

__all__ = ["ModelOptions", "VideoEncoder", "WorkerConfig", "pickled_error"]


@dataclass(frozen=True)
class ModelOptions:
    """How each worker loads the model (paths absolute: workers start in other folders)."""

    model: Path | None
    spec: Path | None
    device: str  # "cuda" (the worker's own GPU) with --gpus-per-worker, else "cpu"
    threads: int
    precision: str
    compile: bool

    def load(self) -> InferenceModel:
        from vidlstm.models import load_inference_model

        return load_inference_model(
            model=self.model,
            spec=self.spec,
            device=self.device,
            threads=self.threads,
            precision=self.precision,
            compile=self.compile,
        )


@dataclass(frozen=True)
class WorkerConfig:
    model: ModelOptions
    decode: DecodeOptions
    save_state: bool
    writer: OutputWriter


class WeightsMismatchError(RuntimeError):
    """A worker loaded other weights than the driver planned with (a checkpoint path that holds
    another file on that node): its outputs would be recorded under the wrong fingerprint."""


class VideoEncoder:
    """Ray Data's callable class: rows `key`, `task` (a pickled `Task`) in; `key`, `frames`,
    `seconds`, `error` (a pickled exception, empty when the output was written) out."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.model = config.model.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [self.encode(pickle.loads(task)) for task in batch["task"]]
        frames, seconds, errors = zip(*records, strict=True) if records else ((), (), ())
        return {
            "key": np.asarray(batch["key"], np.int64),
            "frames": np.array(frames, np.int64),
            "seconds": np.array(seconds, np.float64),
            "error": np.array(errors, object),
        }

    def encode(self, task: Task) -> tuple[int, float, bytes]:
        """Encodes and writes one video: (frames, seconds, b"" or the pickled error)."""
        from .parallel import encode_in_parallel

        started = time.monotonic()
        try:
            if self.model.weights_hash != self.config.writer.weights_hash:
                raise WeightsMismatchError(
                    f"this worker loaded weights {self.model.weights_hash} from {self.config.model.model}, "
                    f"the driver {self.config.writer.weights_hash}: every node must see the same checkpoint"
                )
            # The source by its absolute path: the path as given is relative to the driver's folder.
            source = replace(task, path=task.source)
            (done,) = encode_in_parallel(
                self.model,
                [source],
                self.config.decode,
                workers=1,
                save_state=self.config.save_state,
                progress=lambda count: None,
            )
            if done.error is not None:
                raise done.error
            assert done.video is not None
            self.config.writer.write(task, done.video)
        except Exception as error:  # this video's failure: recorded by the driver, the others go on
            return 0, time.monotonic() - started, pickled_error(error)
        return len(done.video.embeddings), time.monotonic() - started, b""


def pickled_error(error: Exception) -> bytes:
    """`error` as bytes for the driver; one that does not pickle becomes a RuntimeError with its text."""
    try:
        return pickle.dumps(error)
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
