"""Video -> embeddings in process: a decode thread feeds a bounded queue of prepared chunks while
the model runs, so decoding overlaps inference. The CNN sees each chunk as one batch (time is a
batch dimension for it); the LSTM runs over the chunk as a sequence and carries its state on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidlstm.selection import FrameSelection

from .model import State
from .runtime import InferenceModel
from .video_chunks import FrameChunk, prepared_chunks

__all__ = ["VideoChunk", "encode_video"]


@dataclass(frozen=True)
class VideoChunk:
    embeddings: np.ndarray  # float32 [n, D]
    timestamps_ms: np.ndarray
    indices: np.ndarray
    state: State  # after the chunk's last frame


def encode_video(
    model: InferenceModel,
    path: Path,
    sampling: FrameSelection | None = None,
    *,
    chunk_frames: int = 128,
    backend: str = "pyav",
    threads: int = 0,
    prefetch: int = 4,
) -> Iterator[VideoChunk]:
    """Embeddings of `path`, chunk by chunk, as a single episode from zero state."""
    spec = model.model.spec.input
    sampling = sampling or FrameSelection()
    decoded = prepared_chunks(
        path, spec, sampling, chunk_frames=chunk_frames, backend=backend, threads=threads
    )
    chunks = _prefetched(decoded, prefetch)
    state = None
    for chunk in chunks:
        embeddings, state = model.encode(chunk.frames[:, None], state)
        yield VideoChunk(embeddings[:, 0], chunk.timestamps_ms, chunk.indices, state)


_DONE = object()


def _prefetched(items: Iterator[FrameChunk], depth: int) -> Iterator[FrameChunk]:
    """Runs `items` in a thread, at most `depth` ahead; re-raises its error in the consumer."""
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            buffer.put(error)

    thread = threading.Thread(target=produce, name="vidlstm-decode", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)
