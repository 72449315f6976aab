"""Turning command-line inputs (files, folders, globs, @list files) into videos and output names."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VIDEO_EXTENSIONS", "InputError", "VideoInput", "expand_inputs"]

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv")
_GLOB_CHARS = set("*?[")


class InputError(ValueError):
    """An input that names no video, or two inputs that would write the same output."""


@dataclass(frozen=True)
class VideoInput:
    path: Path
    relative: Path  # where its output goes under --out: mirrors the input tree


def expand_inputs(arguments: list[str], extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[VideoInput]:
    """Files as given; folders searched recursively; glob patterns (`**` too); `@list.txt` read line
    by line. Duplicates are dropped; two videos with the same path under --out (the same name from
    two folders given as files, say) are an error, raised before any video is read."""
    found: dict[Path, VideoInput] = {}
    for argument in arguments:
        for item in _expand(argument, extensions):
            found.setdefault(item.path.resolve(), item)
    by_output: dict[Path, Path] = {}
    for item in found.values():
        if item.relative in by_output:
            raise InputError(
                f"{by_output[item.relative]} and {item.path} would both write {item.relative}.* under "
                "--out; pass a folder that holds both (its tree is mirrored) or use one --out for each"
            )
        by_output[item.relative] = item.path
    return list(found.values())


def _expand(argument: str, extensions: tuple[str, ...]) -> list[VideoInput]:
    if argument.startswith("@"):
        lines = Path(argument[1:]).read_text().splitlines()
        items = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return [video for item in items for video in _expand(item, extensions)]
    path = Path(argument)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        return [VideoInput(p, p.relative_to(path)) for p in files]
    if _GLOB_CHARS & set(argument):
        base = _glob_base(argument)
        files = sorted(Path(p) for p in glob.glob(argument, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"no files match {argument!r}")
        return [VideoInput(p, p.relative_to(base)) for p in files]
    if path.is_file():
        return [VideoInput(path, Path(path.name))]
    raise InputError(f"no such file or folder: {argument}")


def _glob_base(pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard."""
    plain: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        plain.append(part)
    return Path(*plain) if plain else Path(".")
