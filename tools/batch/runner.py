"""The batch run: each video once, skipped when already done with the same model and options from
the same unchanged file, failures recorded and passed over; the exit code says whether any failed.
An output that an earlier run wrote for another source is neither reused nor overwritten."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vidlstm.clients import FrameSelection

from .backends import Backend
from .inputs import VideoInput
from .manifest import Manifest, OutputConflictError, Record, SourceStamp, fingerprint
from .outputs import every_output_path, output_paths, remove_partials, write_output

__all__ = ["RunOptions", "run"]

log = logging.getLogger("vidlstm.tools.batch")


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    format: str = "npz"
    selection: FrameSelection = field(default_factory=FrameSelection)
    save_state: bool = False
    quiet: bool = False


def run(inputs: list[VideoInput], backend: Backend, options: RunOptions) -> int:
    """Returns 0 when every video is done (now or before), 1 when any failed."""
    out_dir = options.out_dir.resolve()  # the manifest's paths hold wherever the next run starts
    manifest = Manifest(out_dir / "manifest.jsonl")
    remove_partials(out_dir)
    settings: dict[str, Any] = {
        "selection": asdict(options.selection),
        "format": options.format,
        "state": options.save_state,
    }
    if backend.precision not in (None, "fp32"):  # fp32 left out: earlier outputs (all fp32) stay done
        settings["precision"] = backend.precision
    progress = _Progress(len(inputs), options.quiet)
    mark = fingerprint(backend.weights_hash, settings)
    failed = 0
    for item in inputs:
        source = item.path.resolve()
        outputs = output_paths(out_dir, item.relative, options.format)
        every_format = every_output_path(out_dir, item.relative)
        started = time.monotonic()
        try:
            manifest.check_owner(source, every_format)
            stamp = SourceStamp.of(item.path)
            if manifest.is_done(source, mark, stamp, outputs):
                manifest.record(
                    Record(str(source), "skipped", mark, [str(p) for p in outputs], source_stamp=stamp)
                )
                progress.video_done(item.path, "skipped")
                continue
            frames = _encode(item.path, outputs, backend, options, progress, settings, stamp)
        except Exception as error:  # one bad video must not stop the batch: it is recorded instead
            failed += 1
            if not isinstance(error, OutputConflictError):  # another source's output stays as it is
                for stale in every_format:  # an earlier output of this name, in any format, is stale
                    stale.unlink(missing_ok=True)
            message = f"{type(error).__name__}: {error}"
            manifest.record(Record(str(source), "failed", mark, [], error=message))
            log.error("%s failed: %s", item.path, message)
            progress.video_done(item.path, None)
            continue
        seconds = round(time.monotonic() - started, 3)
        manifest.record(
            Record(str(source), "ok", mark, [str(p) for p in outputs], frames, seconds, source_stamp=stamp)
        )
        progress.video_done(item.path, "ok")
    progress.close()
    if failed:
        log.error("%d of %d videos failed; see %s", failed, len(inputs), manifest.path)
    return 1 if failed else 0


def _encode(
    path: Path,
    outputs: list[Path],
    backend: Backend,
    options: RunOptions,
    progress: _Progress,
    settings: dict[str, Any],
    stamp: SourceStamp,
) -> int:
    """Encodes one video and writes its output; returns its frame count."""
    video = backend.encode(path, options.selection, save_state=options.save_state, progress=progress.frames)
    video.metadata.update(
        source=str(path),
        size_bytes=stamp.size_bytes,
        spec=backend.spec_json,
        weights_hash=backend.weights_hash,
        options=settings,
    )
    write_output(outputs, options.format, video)
    return len(video.embeddings)


class _Progress:
    """A tqdm bar (videos done, frames/s, ETA) or, with --quiet or without tqdm, log lines only."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.bar: Any = None
        self.frame_count = 0
        self.started = time.monotonic()
        if not quiet:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="video", dynamic_ncols=True)
            except ImportError:
                pass

    def frames(self, count: int) -> None:
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
