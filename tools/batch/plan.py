"""The first step of a run: which videos to encode, where each output goes, and what an earlier run
already did. Every execution (sequential, parallel, remote) runs the `todo` list of one plan, so
the skip logic exists once."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .inputs import VideoInput
from .manifest import Manifest, SourceStamp
from .outputs import every_output_path, output_paths

__all__ = ["Plan", "Task", "make_plan"]


@dataclass(frozen=True)
class Task:
    """One video to encode (or skip): the path as given, its absolute source, its output files."""

    path: Path
    source: Path
    outputs: list[Path]
    every_format: list[Path]  # its output names in every format: an earlier run may have used another
    stamp: SourceStamp | None = None  # None when the source could not be read


@dataclass
class Plan:
    todo: list[Task] = field(default_factory=list)
    skipped: list[Task] = field(default_factory=list)
    refused: list[tuple[Task, Exception]] = field(default_factory=list)  # failed before any decoding


def make_plan(inputs: list[VideoInput], manifest: Manifest, mark: str, out_dir: Path, fmt: str) -> Plan:
    """Sorts `inputs` into what to encode, what is done (same fingerprint `mark`, same unchanged
    source, its outputs there) and what fails at once (an output that belongs to another source,
    a source that cannot be read)."""
    plan = Plan()
    for item in inputs:
        source = item.path.resolve()  # the manifest's paths hold wherever the next run starts
        outputs = output_paths(out_dir, item.relative, fmt)
        task = Task(item.path, source, outputs, every_output_path(out_dir, item.relative))
        try:
            manifest.check_owner(source, task.every_format)
            stamp = SourceStamp.of(item.path)
        except Exception as error:  # recorded as this video's failure; the others go on
            plan.refused.append((task, error))
            continue
        task = replace(task, stamp=stamp)
        if manifest.is_done(source, mark, stamp, outputs):
            plan.skipped.append(task)
        else:
            plan.todo.append(task)
    return plan
