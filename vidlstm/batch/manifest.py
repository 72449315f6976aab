"""The run's manifest (JSON Lines): one record per video and outcome; what makes a run resumable."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Manifest", "Record", "fingerprint"]


@dataclass(frozen=True)
class Record:
    source: str
    status: str  # ok | skipped | failed
    fingerprint: str
    outputs: list[str]
    frames: int = 0
    seconds: float = 0.0
    error: str = ""


def fingerprint(weights_hash: str, options: dict[str, Any]) -> str:
    """Identifies what an output was made with: same model weights and same options."""
    text = json.dumps({"weights": weights_hash, "options": options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Manifest:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._done: dict[str, str] = {}  # source -> fingerprint of its last ok output
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
                if entry.get("status") in ("ok", "skipped"):
                    self._done[entry["source"]] = entry["fingerprint"]

    def is_done(self, source: Path, fingerprint: str, outputs: list[Path]) -> bool:
        return self._done.get(str(source)) == fingerprint and all(p.is_file() for p in outputs)

    def record(self, record: Record) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as file:
            file.write(json.dumps(asdict(record)) + "\n")
            file.flush()
            os.fsync(file.fileno())
        if record.status == "ok":
            self._done[record.source] = record.fingerprint
