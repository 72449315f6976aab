"""Decoder processes: each decodes and preprocesses one video at a time into prepared chunks for the
model, which runs in the main process.

Processes, not threads: PyAV's decode with several slice threads takes a process-wide lock per
packet (to capture FFmpeg's logs of every thread), so threads of one process take turns.
Each worker talks to the main process over its own pipe: a send blocks while the pipe is full,
so a worker runs at most the pipe's buffer (a few hundred KiB) plus a chunk ahead of the model
(memory stays bounded), and a worker that crashes (an FFmpeg segfault) breaks only its own pipe;
its video fails, a new worker takes over. Workers fork from a server process that imported this
module once (`forkserver`; no torch: `vidlstm.models` loads names when first used), not from the
main process, whose FFmpeg, OpenCV and torch threads may hold locks a fork would copy held.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import cv2

from vidlstm.models.spec import InputSpec
from vidlstm.models.video import VideoInfo, probe_video
from vidlstm.models.video_chunks import FrameChunk, prepared_chunks
from vidlstm.selection import FrameSelection

__all__ = ["DecodeOptions", "DecoderPool", "Message"]


@dataclass(frozen=True)
class DecodeOptions:
    """What a worker needs to turn a video into model input."""

    spec: InputSpec
    selection: FrameSelection
    chunk_frames: int
    decoder: str
    decoder_threads: int  # FFmpeg's threads per video (0: FFmpeg picks)
    opencv_threads: int  # OpenCV's threads for colour conversion and resizing
    luma: bool = True  # a gray model takes the decoder's luma plane where it can


@dataclass(frozen=True)
class Message:
    """From a worker: a `chunk` of video `video` (in order), then `done` with its VideoInfo, or
    `error` with the reason (no more chunks follow either)."""

    kind: str
    video: int
    payload: Any  # FrameChunk | VideoInfo | Exception


class DecoderPool:
    """`workers` decoder processes; `assign` gives an idle one a video, `receive` returns what the
    busy ones sent."""

    def __init__(self, workers: int, options: DecodeOptions) -> None:
        self.options = options
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([__name__])
        self._workers: list[tuple[BaseProcess, Connection]] = []
        self._busy: dict[int, int] = {}  # worker -> the video it decodes
        try:
            for _ in range(workers):
                self._workers.append(self._start())
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def idle(self) -> list[int]:
        return [worker for worker in range(len(self._workers)) if worker not in self._busy]

    def assign(self, worker: int, video: int, path: Path) -> None:
        self._workers[worker][1].send((video, path))
        self._busy[worker] = video

    def receive(self) -> list[Message]:
        """Waits until a busy worker sent something (or died); returns every message ready now."""
        by_ready: dict[object, int] = {}
        for worker in self._busy:
            process, conn = self._workers[worker]
            by_ready[conn] = by_ready[process.sentinel] = worker
        messages: list[Message] = []
        for ready in wait(list(by_ready)):  # type: ignore[arg-type]
            worker = by_ready[ready]
            if worker in self._busy:
                messages += self._drain(worker)
        return messages

    def _drain(self, worker: int) -> list[Message]:
        process, conn = self._workers[worker]
        messages: list[Message] = []
        try:
            while conn.poll():
                messages.append(conn.recv())
        except (EOFError, OSError):  # it died: its video fails, a new worker takes its place
            video = self._busy[worker]
            if not any(m.kind in ("done", "error") for m in messages):
                process.join(timeout=5)
                reason = f"the decoder process died (exit code {process.exitcode}) on this video"
                messages.append(Message("error", video, RuntimeError(reason)))
            conn.close()
            self._workers[worker] = self._start()
            self._busy.pop(worker, None)
            return messages
        if any(m.kind in ("done", "error") for m in messages):
            self._busy.pop(worker)
        return messages

    def close(self) -> None:
        for _, conn in self._workers:
            with contextlib.suppress(OSError):  # a worker that died has closed its end
                conn.send(None)
            conn.close()
        for process, _ in self._workers:
            process.join(timeout=1)
            if process.exitcode is None:  # still decoding a video nobody waits for
                process.terminate()
                process.join()
        self._workers = []

    def _start(self) -> tuple[BaseProcess, Connection]:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(theirs, self.options), name="vidlstm-decoder", daemon=True
        )
        process.start()
        theirs.close()
        return process, ours


def _serve(conn: Connection, options: DecodeOptions) -> None:
    """A worker's life: decode the videos it is given until it is given None. Ctrl-C is the main
    process's to handle: it stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(options.opencv_threads)
    while (task := conn.recv()) is not None:
        video, path = task
        try:
            for kind, payload in _decoded(path, options):
                conn.send(Message(kind, video, payload))
        except Exception as error:  # the video's failure, sent to the main process to record
            conn.send(Message("error", video, _picklable(error)))


def _decoded(path: Path, options: DecodeOptions) -> Iterator[tuple[str, FrameChunk | VideoInfo]]:
    info = probe_video(path)
    chunks = prepared_chunks(
        path,
        options.spec,
        options.selection,
        chunk_frames=options.chunk_frames,
        backend=options.decoder,
        threads=options.decoder_threads,
        luma=options.luma,
    )
    for chunk in chunks:
        yield "chunk", chunk
    yield "done", info


def _picklable(error: Exception) -> Exception:
    """The error itself when it can cross to the main process, else its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
