"""Files the tools write follow the umask, as any tool's output does: 0644 under umask 022 (so a
container's non-root user can read a mounted checkpoint or embeddings), 0600 under 077."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_rl import CleanRLAgent
from videos import write_video

from vidlstm.models import build_model, default_spec, save_checkpoint
from vidlstm.tools.batch.cli import encode_video_main
from vidlstm.tools.import_cli import import_main

MODES = [(0o022, 0o644), (0o077, 0o600)]


@pytest.fixture(params=MODES, ids=["umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Runs the test under a umask; yields the mode new files must get."""
    mask, mode = request.param
    previous = os.umask(mask)
    try:
        yield mode
    finally:
        os.umask(previous)


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


@pytest.mark.parametrize("fmt", ["npz", "npy", "parquet"])
def test_encode_video_outputs_follow_the_umask(tmp_path: Path, umask: int, fmt: str) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_video(inputs / "clip.mp4", frames=3, width=64, height=48)
    out = tmp_path / "out"
    assert encode_video_main(["--quiet", str(inputs), "--out", str(out), "--format", fmt]) == 0
    modes = _modes(out)
    assert len(modes) == (3 if fmt == "npy" else 2)  # outputs and the manifest
    assert modes == dict.fromkeys(modes, umask)


def test_checkpoints_follow_the_umask(tmp_path: Path, umask: int) -> None:
    saved = save_checkpoint(build_model(default_spec()), tmp_path / "model.safetensors")
    torch.save(CleanRLAgent().state_dict(), tmp_path / "agent.pt")
    assert import_main(["cleanrl", str(tmp_path / "agent.pt"), "--out", str(tmp_path / "imported")]) == 0
    imported = tmp_path / "imported" / "model.safetensors"
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in (saved, imported)} == {saved: umask, imported: umask}
    assert _modes(tmp_path / "imported") == {"model.safetensors": umask}  # no temporary file left
