"""Writing one video's embeddings: npz (default), npy (+ JSON sidecar) or Parquet (a row per frame).

Output names keep the whole input file name (`ep.1.mp4` -> `ep.1.mp4.npz`), so no two inputs share
one. Every file is written to a temporary name in the target folder and renamed into place, so a
killed run never leaves a half-written output; files get the umask's mode, as any tool's output.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["FORMATS", "EncodedVideo", "every_output_path", "output_paths", "remove_partials", "write_output"]

FORMATS = ("npz", "npy", "parquet")
PARTIAL = ".partial"


@dataclass
class EncodedVideo:
    embeddings: np.ndarray  # float32 [T, D]
    timestamps_ms: np.ndarray  # float64 [T]
    frame_indices: np.ndarray  # int64 [T]
    metadata: dict[str, Any]  # source, size, fps, width, height, spec, weights hash, options
    final_state: dict[str, np.ndarray] = field(default_factory=dict)  # when asked for

    @classmethod
    def joined(
        cls,
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        embedding_size: int,
        metadata: dict[str, Any],
        final_state: dict[str, np.ndarray],
    ) -> EncodedVideo:
        """One video from its parts in order: (embeddings [n, D], timestamps_ms [n], indices [n])."""
        if not parts:
            empty = np.zeros(0)
            embeddings = np.zeros((0, embedding_size), np.float32)
            return cls(embeddings, empty, empty.astype(np.int64), metadata, final_state)
        embeddings, times, indices = (np.concatenate(column) for column in zip(*parts, strict=True))
        return cls(embeddings.astype(np.float32), times, indices.astype(np.int64), metadata, final_state)


def output_paths(out_dir: Path, relative: Path, fmt: str) -> list[Path]:
    """The file(s) a video's output consists of; the last one written marks it complete."""
    base = out_dir / relative
    suffixes = (".npy", ".json") if fmt == "npy" else (f".{fmt}",)
    return [base.with_name(base.name + suffix) for suffix in suffixes]


def every_output_path(out_dir: Path, relative: Path) -> list[Path]:
    """The files a video's output may consist of in any format: an earlier run may have used another."""
    return [path for fmt in FORMATS for path in output_paths(out_dir, relative, fmt)]


def write_output(paths: list[Path], fmt: str, video: EncodedVideo) -> None:
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        _atomic(paths[0], lambda file: _write_npz(file, video))
    elif fmt == "npy":
        _atomic(paths[0], lambda file: np.save(file, video.embeddings, allow_pickle=False))
        sidecar = {
            **_metadata_with_state(video),
            "timestamps_ms": video.timestamps_ms.tolist(),
            "frame_indices": video.frame_indices.tolist(),
        }
        _atomic(paths[1], lambda file: file.write(json.dumps(sidecar).encode()))
    elif fmt == "parquet":
        _atomic(paths[0], lambda file: _write_parquet(file, video))
    else:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _metadata_with_state(video: EncodedVideo) -> dict[str, Any]:
    """The metadata and the final state (name -> nested lists), for formats that keep them as JSON."""
    return {**video.metadata, "final_state": {k: v.tolist() for k, v in video.final_state.items()}}


def _write_npz(file: BinaryIO, video: EncodedVideo) -> None:
    arrays = {
        "embeddings": video.embeddings,
        "timestamps_ms": video.timestamps_ms,
        "frame_indices": video.frame_indices,
        "metadata": np.array(json.dumps(video.metadata)),
        **{f"state_{k}": v for k, v in video.final_state.items()},
    }
    np.savez(file, allow_pickle=False, **arrays)


def _write_parquet(file: BinaryIO, video: EncodedVideo) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("Parquet output needs pyarrow: pip install 'vidlstm[parquet]'") from None
    dim = video.embeddings.shape[1] if video.embeddings.ndim == 2 else 0
    embeddings = pa.FixedSizeListArray.from_arrays(pa.array(video.embeddings.reshape(-1), pa.float32()), dim)
    table = pa.table(
        {
            "frame_index": pa.array(video.frame_indices, pa.int64()),
            "timestamp_ms": pa.array(video.timestamps_ms, pa.float64()),
            "embedding": embeddings,
        }
    ).replace_schema_metadata({"vidlstm": json.dumps(_metadata_with_state(video))})
    pq.write_table(table, file)


def remove_partials(out_dir: Path) -> None:
    """Deletes temporaries a killed run left behind (they never carry an output's name)."""
    if out_dir.is_dir():
        for stale in out_dir.rglob(f".*{PARTIAL}"):
            stale.unlink(missing_ok=True)


def _atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Writes `path` through a temporary file renamed into place. The temporary file is created with
    mode 0666 less the umask, like any file a tool writes (mkstemp's 0600 would stay on the output)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}{PARTIAL}")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            write(file)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
