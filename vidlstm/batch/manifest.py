"""The run's manifest (JSON Lines): one record per video and outcome; what makes a run resumable."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Manifest", "Record", "SourceStamp", "fingerprint"]

_SAMPLE_BYTES = 64 << 10


@dataclass(frozen=True)
class SourceStamp:
    """What a source video was when it was encoded: a rerun encodes a changed file again."""

    size_bytes: int
    mtime_ns: int
    sample_sha256: str  # of its first and last 64 KiB: a rewrite that kept size and mtime shows here

    @classmethod
    def of(cls, path: Path) -> SourceStamp:
        stat = path.stat()
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            digest.update(file.read(_SAMPLE_BYTES))
            file.seek(max(stat.st_size - _SAMPLE_BYTES, _SAMPLE_BYTES))
            digest.update(file.read(_SAMPLE_BYTES))
        return cls(stat.st_size, stat.st_mtime_ns, digest.hexdigest())


@dataclass(frozen=True)
class Record:
    source: str
    status: str  # ok | skipped | failed
    fingerprint: str
    outputs: list[str]
    frames: int = 0
    seconds: float = 0.0
    error: str = ""
    source_stamp: SourceStamp | None = None


def fingerprint(weights_hash: str, options: dict[str, Any]) -> str:
    """Identifies what an output was made with: same model weights and same options."""
    text = json.dumps({"weights": weights_hash, "options": options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Manifest:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._done: dict[str, tuple[str, Any]] = {}  # source -> (fingerprint, stamp) of its last output
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
                if entry.get("status") in ("ok", "skipped"):
                    self._done[entry["source"]] = (entry["fingerprint"], entry.get("source_stamp"))

    def is_done(self, source: Path, fingerprint: str, stamp: SourceStamp, outputs: list[Path]) -> bool:
        """Made with the same weights and options from the same file, and still there."""
        done = self._done.get(str(source)) == (fingerprint, asdict(stamp))
        return done and all(p.is_file() for p in outputs)

    def record(self, record: Record) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as file:
            file.write(json.dumps(asdict(record)) + "\n")
            file.flush()
            os.fsync(file.fileno())
        if record.status == "ok" and record.source_stamp is not None:
            self._done[record.source] = (record.fingerprint, asdict(record.source_stamp))
