"""Packaging: the import root works from outside the repo, stubs are fresh, the light client has no torch."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_outside(tmp_path: Path, code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_package_imports_from_outside_the_repository(tmp_path: Path) -> None:
    out = _run_outside(
        tmp_path,
        "import vidlstm, vidlstm.models, vidlstm.service, vidlstm.clients, vidlstm.v1.encoder_pb2 as pb\n"
        "print(vidlstm.models.__file__); print(pb.DESCRIPTOR.package)",
    )
    models_file, package = out.split()
    assert Path(models_file) == REPO / "models" / "__init__.py"
    assert package == "vidlstm.v1"


def test_light_client_does_not_import_torch(tmp_path: Path) -> None:
    out = _run_outside(
        tmp_path,
        "import sys, vidlstm.clients, vidlstm.cli; print('torch' in sys.modules, 'cv2' in sys.modules)",
    )
    assert out.split() == ["False", "False"]


def test_no_bare_top_level_modules_are_installed(tmp_path: Path) -> None:
    out = _run_outside(
        tmp_path,
        "import importlib.util\n"
        "print([n for n in ('models', 'service', 'clients') if importlib.util.find_spec(n)])",
    )
    assert out.strip() == "[]"


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    sys.path.insert(0, str(REPO / "proto"))
    try:
        from generate import generate
    finally:
        sys.path.pop(0)
    fresh = generate(tmp_path)
    assert fresh, "nothing generated"
    for path in fresh:
        checked_in = REPO / path.relative_to(tmp_path)
        stale = f"{checked_in.relative_to(REPO)} is stale: run `make proto` and commit the result"
        assert checked_in.exists(), stale
        assert filecmp.cmp(path, checked_in, shallow=False), stale
