"""The batch run: plan (what to encode, what is done) -> execute (a backend encodes the rest, in any
order) -> record (outputs written atomically, the manifest, progress). Each video once, skipped
when already done with the same model and options from the same unchanged file, failures recorded
and passed over; the exit code says whether any failed. An output that an earlier run wrote for
another source is neither reused nor overwritten."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vidlstm.clients import FrameSelection

from .backends import Backend, Finished
from .inputs import VideoInput
from .manifest import Manifest, fingerprint
from .outputs import remove_partials
from .plan import make_plan
from .record import Recorder
from .writer import OutputWriter

__all__ = ["RunOptions", "run"]


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
        **backend.result_options,
    }
    mark = fingerprint(backend.weights_hash, settings)
    plan = make_plan(inputs, manifest, mark, out_dir, options.format)
    recorder = Recorder(manifest, mark, len(inputs), options.quiet)
    for task, error in plan.refused:
        recorder.failed(task, error)
    for task in plan.skipped:
        recorder.skipped(task)
    writer = OutputWriter(options.format, backend.spec_json, backend.weights_hash, settings)
    finished = backend.encode_all(
        plan.todo,
        options.selection,
        save_state=options.save_state,
        progress=recorder.progress.frames,
        writer=writer,
    )
    for done in finished:
        _record(done, writer, recorder)
    remove_partials(out_dir)  # a Ray worker killed while writing leaves its temporary file
    return recorder.close(len(inputs))


def _record(done: Finished, writer: OutputWriter, recorder: Recorder) -> None:
    """Writes a finished video's output (unless its backend wrote it) and records it; a video that
    failed, or whose output cannot be written, is recorded failed."""
    if done.error is not None:
        recorder.failed(done.task, done.error)
        return
    if done.video is None:  # written where it was encoded (a Ray worker)
        recorder.ok(done.task, done.frames, done.seconds)
        return
    try:
        writer.write(done.task, done.video)
    except Exception as error:  # one bad video must not stop the batch: it is recorded instead
        recorder.failed(done.task, error)
        return
    recorder.ok(done.task, len(done.video.embeddings), done.seconds)
