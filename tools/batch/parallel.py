"""Several videos at once in this process's model: decoder processes prepare chunks, and each model
call takes the chunks of every video that has some ready.

The server's batch engine runs those calls (one CNN call over all their frames, the LSTM once per
distinct length), with one state slot per video in flight: a video's LSTM state is carried from
its own chunk to its own next chunk only, and its frames stay in order (one worker decodes a video
and sends its chunks in order; a call takes all of a video's ready chunks as one sequence).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from vidlstm.models import InferenceModel
from vidlstm.models.video import VideoInfo
from vidlstm.models.video_chunks import FrameChunk
from vidlstm.service.engine import BatchEngine, Job, PerEnvState, zero_state
from vidlstm.service.pool import StatePool

from .backends import Finished
from .decoders import DecodeOptions, DecoderPool, Message
from .outputs import EncodedVideo
from .plan import Task

__all__ = ["encode_in_parallel"]


@dataclass
class _InFlight:
    task: Task
    started: float = field(default_factory=time.monotonic)
    slot: int | None = None  # its state slot, from its first chunk on
    pending: list[FrameChunk] = field(default_factory=list)  # received, not yet through the model
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


def encode_in_parallel(
    model: InferenceModel,
    tasks: list[Task],
    options: DecodeOptions,
    *,
    workers: int,
    save_state: bool,
    progress: Callable[[int], None],
) -> Iterator[Finished]:
    """Encodes `tasks` with `workers` decoder processes; yields each video as it finishes."""
    if not tasks:
        return
    runner = _ModelRunner(model, workers, options.chunk_frames)
    waiting = list(reversed(list(enumerate(tasks))))
    flying: dict[int, _InFlight] = {}
    with DecoderPool(min(workers, len(tasks)), options) as pool:
        while waiting or flying:
            for worker in pool.idle():
                if not waiting:
                    break
                key, task = waiting.pop()
                flying[key] = _InFlight(task)
                pool.assign(worker, key, task.path)
            ends = {m.video: m for m in pool.receive() if _take(m, flying)}
            for key, error in runner.run(flying, progress):  # a model failure wins over a `done`
                ends[key] = Message("error", key, error)
            for end in ends.values():
                yield runner.finish(flying.pop(end.video), end, save_state)


def _take(message: Message, flying: dict[int, _InFlight]) -> bool:
    """Files a chunk with its video; True for the video's last message (done or error)."""
    video = flying.get(message.video)
    if video is None:  # a video that already failed in the model
        return False
    if message.kind == "chunk":
        video.pending.append(message.payload)
        return False
    if message.kind == "error":  # nothing more of it goes through the model
        video.pending.clear()
    return True


class _ModelRunner:
    """The model side: one state slot per video in flight, one batch engine call per round."""

    def __init__(self, model: InferenceModel, slots: int, chunk_frames: int) -> None:
        self.model = model
        self.pool = StatePool(model.state_specs, slots, model.device)
        self.engine = BatchEngine(model, self.pool, chunk_frames)

    def run(
        self, flying: dict[int, _InFlight], progress: Callable[[int], None]
    ) -> list[tuple[int, Exception]]:
        """Runs every pending chunk in one call; returns the videos that failed in it (all of them
        when the model fails: which one caused it is not known)."""
        ready = {key: video for key, video in flying.items() if video.pending}
        if not ready:
            return []
        jobs = [self._job(video) for video in ready.values()]
        try:
            results = self.engine.run(jobs)
        except Exception as error:
            return [(key, error) for key in ready]
        for video, result in zip(ready.values(), results, strict=True):
            assert result.embeddings is not None
            times = np.concatenate([c.timestamps_ms for c in video.pending])
            indices = np.concatenate([c.indices for c in video.pending])
            video.parts.append((result.embeddings[:, 0], times, indices))
            video.pending.clear()
            progress(len(times))
        return []

    def _job(self, video: _InFlight) -> Job:
        """The video's ready chunks as one sequence; its first installs the zero state."""
        initial: PerEnvState | None = None
        if video.slot is None:
            (video.slot,) = self.pool.allocate(1)
            initial = zero_state(self.model.state_specs)
        frames = np.concatenate([chunk.frames for chunk in video.pending])
        return Job.sequence(frames, video.slot, np.zeros(len(frames), bool), initial)

    def finish(self, video: _InFlight, end: Message, save_state: bool) -> Finished:
        """The video's result (its final state read back when asked for); frees its slot."""
        seconds = time.monotonic() - video.started
        try:
            if end.kind == "error":
                return Finished(video.task, None, end.payload, seconds)
            info: VideoInfo = end.payload
            final = self._final_state(video) if save_state else {}
            metadata = {"fps": info.fps, "width": info.width, "height": info.height, "codec": info.codec}
            encoded = EncodedVideo.joined(video.parts, self.model.out_size, metadata, final)
            return Finished(video.task, encoded, None, seconds)
        finally:
            if video.slot is not None:  # between model calls: free for the next video at once
                self.pool.release([video.slot])
                self.pool.recycle_released()

    def _final_state(self, video: _InFlight) -> PerEnvState:
        if video.slot is None:  # no frame selected: the episode's zero state
            return zero_state(self.model.state_specs)
        read = Job.step(None, [], np.zeros((1, 0), bool), {}, [video.slot])
        (result,) = self.engine.run([read])
        assert result.states is not None
        return {name: value[:, 0] for name, value in result.states.items()}
