"""The last step of a run: each video's outcome into the manifest, the progress bar, the failures.
Called from the run's main thread only; `Progress.frames` may be called from any thread."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from .manifest import Manifest, OutputConflictError, Record
from .plan import Task

__all__ = ["Progress", "Recorder"]

log = logging.getLogger("vidlstm.tools.batch")


class Recorder:
    def __init__(self, manifest: Manifest, mark: str, total: int, quiet: bool) -> None:
        self.manifest = manifest
        self.mark = mark
        self.progress = Progress(total, quiet)
        self.failures = 0

    def skipped(self, task: Task) -> None:
        outputs = [str(p) for p in task.outputs]
        self.manifest.record(Record(str(task.source), "skipped", self.mark, outputs, source_stamp=task.stamp))
        self.progress.video_done(task.path, "skipped")

    def ok(self, task: Task, frames: int, seconds: float) -> None:
        outputs = [str(p) for p in task.outputs]
        record = Record(
            str(task.source), "ok", self.mark, outputs, frames, round(seconds, 3), source_stamp=task.stamp
        )
        self.manifest.record(record)
        self.progress.video_done(task.path, "ok")

    def failed(self, task: Task, error: Exception) -> None:
        """Records the failure; an earlier output of this name, in any format, is stale and deleted,
        unless it belongs to another source (that one stays as it is)."""
        self.failures += 1
        if not isinstance(error, OutputConflictError):
            for stale in task.every_format:
                stale.unlink(missing_ok=True)
        message = f"{type(error).__name__}: {error}"
        self.manifest.record(Record(str(task.source), "failed", self.mark, [], error=message))
        log.error("%s failed: %s", task.path, message)
        self.progress.video_done(task.path, None)

    def close(self, total: int) -> int:
        """Returns the exit code: 0 when every video is done (now or before), 1 when any failed."""
        self.progress.close()
        if self.failures:
            log.error("%d of %d videos failed; see %s", self.failures, total, self.manifest.path)
        return 1 if self.failures else 0


class Progress:
    """A tqdm bar (videos done, frames/s of the whole run, ETA) or, with --quiet or without tqdm,
    log lines only."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.bar: Any = None
        self.frame_count = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()  # remote uploads report frames from their own threads
        if not quiet:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="video", dynamic_ncols=True)
            except ImportError:
                pass

    def frames(self, count: int) -> None:
        with self._lock:
            self.frame_count += count
            if self.bar is not None:
                rate = self.frame_count / max(time.monotonic() - self.started, 1e-9)
                self.bar.set_postfix_str(f"{self.frame_count} frames, {rate:,.0f} frames/s", refresh=False)

    def video_done(self, path: Path, status: str | None) -> None:
        """Counts a video; `status` None when it was already logged (failures)."""
        if self.bar is not None:
            self.bar.update(1)
        elif status is not None:
            log.info("%s: %s", path, status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
