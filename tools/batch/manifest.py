"""The run's manifest (JSON Lines): one record per video and outcome; what makes a run resumable,
and what knows which source each output holds, so that no run overwrites another source's."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Manifest", "OutputConflictError", "Record", "SourceStamp", "fingerprint"]

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


class OutputConflictError(Exception):
    """An output that an earlier run wrote for another source (the same file name in another
    folder): writing over it would lose those embeddings, and reusing it would give the wrong ones."""


@dataclass(frozen=True)
class Record:
    source: str
    status: str  # ok | skipped | failed
    fingerprint: str
    outputs: list[str]  # absolute paths
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
        self._owners: dict[Path, str] = {}  # output -> the source it was last written for
        text = path.read_text() if path.exists() else ""
        self._cut = not text.endswith("\n") if text else False  # a killed run's last line
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed run
            self._remember(entry)

    def _remember(self, entry: dict[str, Any]) -> None:
        if entry.get("status") in ("ok", "skipped"):
            self._done[entry["source"]] = (entry["fingerprint"], entry.get("source_stamp"))
            for output in entry["outputs"]:  # older manifests hold paths relative to their run's cwd
                self._owners[Path(output).resolve()] = entry["source"]

    def check_owner(self, source: Path, outputs: list[Path]) -> None:
        """Raises OutputConflictError when one of `outputs` is there and was written for another source."""
        for output in outputs:
            owner = self._owners.get(output)
            if owner is not None and owner != str(source) and output.exists():
                raise OutputConflictError(
                    f"{output} holds the embeddings of {owner} from an earlier run; "
                    "use another --out or delete it"
                )

    def is_done(self, source: Path, fingerprint: str, stamp: SourceStamp, outputs: list[Path]) -> bool:
        """Made with the same weights and options from the same file, and still there, holding the
        embeddings of this source."""
        done = self._done.get(str(source)) == (fingerprint, asdict(stamp))
        return done and all(self._owners.get(p) == str(source) and p.is_file() for p in outputs)

    def record(self, record: Record) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as file:
            # A record glued to a killed run's cut line would be lost with it.
            file.write(("\n" if self._cut else "") + json.dumps(asdict(record)) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self._cut = False
        self._remember(asdict(record))
