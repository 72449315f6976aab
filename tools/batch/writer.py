"""A finished video's output: its metadata completed and its files written atomically. Built once by
the driver, so that the run's own process and a Ray worker on another node write the same files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .outputs import EncodedVideo, write_output
from .plan import Task

__all__ = ["OutputWriter"]


@dataclass(frozen=True)
class OutputWriter:
    """What every output of a run carries besides its embeddings (picklable: sent to Ray workers)."""

    fmt: str
    spec_json: str
    weights_hash: str
    settings: dict[str, Any]  # the options in the resume fingerprint

    def write(self, task: Task, video: EncodedVideo) -> None:
        """Writes `video` to the task's outputs, each through a temporary file renamed into place."""
        assert task.stamp is not None  # planned tasks carry their source's stamp
        video.metadata.update(
            source=str(task.path),
            size_bytes=task.stamp.size_bytes,
            spec=self.spec_json,
            weights_hash=self.weights_hash,
            options=self.settings,
        )
        write_output(task.outputs, self.fmt, video)
