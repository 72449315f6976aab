"""Where the embeddings come from: the model in this process, or a server's EncodeVideo RPC."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vidlstm.clients import EncoderClient, FrameSelection

from .outputs import EncodedVideo

if TYPE_CHECKING:
    from vidlstm.models import InferenceModel

__all__ = ["Backend", "LocalBackend", "RemoteBackend"]

Progress = Callable[[int], None]


class Backend(Protocol):
    weights_hash: str
    spec_json: str
    precision: str | None  # the CNN's arithmetic; None where it is not known (a server's)

    def encode(
        self, path: Path, selection: FrameSelection, *, save_state: bool, progress: Progress
    ) -> EncodedVideo: ...


class LocalBackend:
    """Decodes in a worker thread and runs the model here (needs vidlstm[server])."""

    def __init__(
        self, model: InferenceModel, *, decoder: str, decoder_threads: int, chunk_frames: int
    ) -> None:
        self.model = model
        self.decoder = decoder
        self.decoder_threads = decoder_threads
        self.chunk_frames = chunk_frames
        self.weights_hash = model.weights_hash
        self.spec_json = model.spec.to_json()
        self.precision: str | None = model.precision

    def encode(
        self, path: Path, selection: FrameSelection, *, save_state: bool, progress: Progress
    ) -> EncodedVideo:
        from vidlstm.models.video import probe_video
        from vidlstm.models.video_pipeline import encode_video

        info = probe_video(path)
        parts, state = [], self.model.initial_state(1)  # no frame kept: the episode's zero state
        for chunk in encode_video(
            self.model,
            path,
            selection,
            chunk_frames=self.chunk_frames,
            backend=self.decoder,
            threads=self.decoder_threads,
        ):
            parts.append(chunk)
            state = chunk.state
            progress(len(chunk.embeddings))
        final = {k: v[:, 0].cpu().numpy() for k, v in state.items()} if save_state else {}
        return _joined(
            [(p.embeddings, p.timestamps_ms, p.indices) for p in parts],
            self.model.out_size,
            {"fps": info.fps, "width": info.width, "height": info.height, "codec": info.codec},
            final,
        )


class RemoteBackend:
    """Uploads each video to a server's EncodeVideo RPC (light client: no torch here)."""

    precision: str | None = None  # ModelInfo does not say which precision the server runs

    def __init__(self, client: EncoderClient) -> None:
        self.client = client
        info = client.info()
        self.weights_hash = info.weights_hash
        self.spec_json = info.spec_json
        self.embedding_size = info.embedding_size

    def encode(
        self, path: Path, selection: FrameSelection, *, save_state: bool, progress: Progress
    ) -> EncodedVideo:
        parts, video_info, final = [], {}, {}
        for part in self.client.encode_video(path, selection, return_state=save_state):
            if part.summary is not None:
                s = part.summary
                video_info = {"fps": s.fps, "width": s.width, "height": s.height, "codec": s.codec}
                final = dict(part.final_state.tensors) if part.final_state else {}
                continue
            parts.append((part.embeddings, part.timestamps_ms, part.frame_indices))
            progress(len(part.embeddings))
        return _joined(parts, self.embedding_size, video_info, final)


def _joined(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    embedding_size: int,
    info: dict[str, Any],
    final_state: dict[str, np.ndarray],
) -> EncodedVideo:
    if not parts:
        empty = np.zeros(0)
        return EncodedVideo(
            np.zeros((0, embedding_size), np.float32), empty, empty.astype(np.int64), info, final_state
        )
    embeddings, times, indices = (np.concatenate(column) for column in zip(*parts, strict=True))
    return EncodedVideo(embeddings.astype(np.float32), times, indices.astype(np.int64), info, final_state)
