"""The middle step of a run, execute: where the embeddings come from. The model in this process fed
by decoder processes, a server's EncodeVideo RPC with several uploads in flight, or Ray workers
(`ray_backend.py`); each takes a plan's `todo` list and yields each video as it finishes, in any
order."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vidlstm.clients import EncoderClient, FrameSelection

from .outputs import EncodedVideo
from .plan import Task
from .writer import OutputWriter

if TYPE_CHECKING:
    from vidlstm.models import InferenceModel

__all__ = ["Backend", "Finished", "LocalBackend", "RemoteBackend", "result_options"]

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Finished:
    """A video's result (`video`) or why it failed (`error`); neither when the backend wrote its
    output where it was encoded (a Ray worker), with `frames` embeddings."""

    task: Task
    video: EncodedVideo | None
    error: Exception | None
    seconds: float
    frames: int = 0


class Backend(Protocol):
    weights_hash: str
    spec_json: str
    # Its options that change results (precision, ...): in the resume fingerprint and the outputs.
    result_options: dict[str, Any]

    def encode_all(
        self,
        tasks: list[Task],
        selection: FrameSelection,
        *,
        save_state: bool,
        progress: Progress,
        writer: OutputWriter,  # for backends that write where they encode; the others leave it to the run
    ) -> Iterator[Finished]: ...


def result_options(precision: str, grayscale: bool, *, decoder: str, luma: bool) -> dict[str, Any]:
    """The options of a model run here or on Ray workers that change results, for the resume
    fingerprint and the outputs. Left out where results are as before (fp32; gray from RGB):
    earlier outputs stay done."""
    options: dict[str, Any] = {}
    if precision != "fp32":
        options["precision"] = precision
    if luma and decoder == "pyav" and grayscale:  # OpenCV gives RGB only
        options["gray"] = "luma"
    return options


class LocalBackend:
    """`jobs` decoder processes feeding the model in this process (needs vidlstm[server])."""

    def __init__(
        self,
        model: InferenceModel,
        *,
        jobs: int,
        decoder: str,
        decoder_threads: int,
        opencv_threads: int,
        chunk_frames: int,
        luma: bool,
    ) -> None:
        self.model = model
        self.jobs = jobs
        self.decoder = decoder
        self.decoder_threads = decoder_threads
        self.opencv_threads = opencv_threads
        self.chunk_frames = chunk_frames
        self.luma = luma
        self.weights_hash = model.weights_hash
        self.spec_json = model.spec.to_json()
        self.result_options = result_options(
            model.precision, model.input_spec.grayscale, decoder=decoder, luma=luma
        )

    def encode_all(
        self,
        tasks: list[Task],
        selection: FrameSelection,
        *,
        save_state: bool,
        progress: Progress,
        writer: OutputWriter,
    ) -> Iterator[Finished]:
        from .decoders import DecodeOptions
        from .parallel import encode_in_parallel

        options = DecodeOptions(
            self.model.input_spec,
            selection,
            self.chunk_frames,
            self.decoder,
            self.decoder_threads,
            self.opencv_threads,
            self.luma,
        )
        return encode_in_parallel(
            self.model, tasks, options, workers=self.jobs, save_state=save_state, progress=progress
        )


class RemoteBackend:
    """Uploads to a server's EncodeVideo RPC, `jobs` videos at a time, so that the server's batcher
    sees several at once (light client: no torch here)."""

    def __init__(self, client: EncoderClient, *, jobs: int) -> None:
        self.client = client
        self.jobs = jobs
        info = client.info()
        # As in process ("" is a server from before ModelInfo said its precision): a server decodes gray
        # models from the luma plane, with PyAV unless started with --decoder opencv (not advertised).
        self.result_options = result_options(
            info.precision or "fp32", info.input_channels == 1, decoder="pyav", luma=True
        )
        self.weights_hash = info.weights_hash
        self.spec_json = info.spec_json
        self.embedding_size = info.embedding_size

    def encode_all(
        self,
        tasks: list[Task],
        selection: FrameSelection,
        *,
        save_state: bool,
        progress: Progress,
        writer: OutputWriter,
    ) -> Iterator[Finished]:
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="vidlstm-upload") as uploads:
            futures = [uploads.submit(self._encode, t, selection, save_state, progress) for t in tasks]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

    def _encode(
        self, task: Task, selection: FrameSelection, save_state: bool, progress: Progress
    ) -> Finished:
        started = time.monotonic()
        try:
            video = self._upload(task, selection, save_state, progress)
        except Exception as error:  # this video's failure: recorded, the others go on
            return Finished(task, None, error, time.monotonic() - started)
        return Finished(task, video, None, time.monotonic() - started)

    def _upload(
        self, task: Task, selection: FrameSelection, save_state: bool, progress: Progress
    ) -> EncodedVideo:
        parts, video_info, final = [], {}, {}
        for part in self.client.encode_video(task.path, selection, return_state=save_state):
            if part.summary is not None:
                s = part.summary
                video_info = {"fps": s.fps, "width": s.width, "height": s.height, "codec": s.codec}
                final = dict(part.final_state.tensors) if part.final_state else {}
                continue
            if part.weights is not None and part.weights.weights_hash != self.weights_hash:
                raise RuntimeError(
                    f"the server's weights changed during this run (now version {part.weights.number}, "
                    f"{part.weights.weights_hash[:12]}; this run's outputs are of {self.weights_hash[:12]}): "
                    "this video is not written; run again for the new weights"
                )
            parts.append((part.embeddings, part.timestamps_ms, part.frame_indices))
            progress(len(part.embeddings))
        return EncodedVideo.joined(parts, self.embedding_size, video_info, final)
