"""Packaging: the import root works from outside the repo, stubs are fresh, the light client has no torch."""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from conftest import ServerThread

REPO = Path(__file__).resolve().parents[1]
# Runs the `vidlstm` command as on a `pip install vidlstm` machine: the server extra's modules fail to import.
WITHOUT_SERVER_EXTRA = """
import importlib.abc, sys

class ServerExtraMissing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (vidlstm[server] is not installed)")

sys.meta_path.insert(0, ServerExtraMissing())
from vidlstm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_outside(tmp_path: Path, code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
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


@pytest.mark.parametrize(
    ("command", "expected"), [("health", "SERVING"), ("info", "embedding      256 float32")]
)
def test_light_client_commands_run_without_the_server_extra(
    server: ServerThread, tmp_path: Path, command: str, expected: str
) -> None:
    code = WITHOUT_SERVER_EXTRA.format(blocked=_server_extra_modules())
    out = _run_outside(tmp_path, code, command, "--server", server.address)
    assert expected in out


def _server_extra_modules() -> set[str]:
    """Top-level modules installed only by `vidlstm[server]`, per pyproject.toml (torch, cv2, ...)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extra = {_distribution(r) for r in project["optional-dependencies"]["server"]}
    server_only = extra - {_distribution(r) for r in project["dependencies"]}
    return {
        module
        for module, distributions in packages_distributions().items()
        if server_only & {_distribution(d) for d in distributions}
    }


def _distribution(requirement: str) -> str:
    """The normalised distribution name of a requirement ("PyYAML>=6" -> "pyyaml")."""
    name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


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


def test_encode_video_imports_no_ray_unless_asked(tmp_path: Path) -> None:
    out = _run_outside(
        tmp_path,
        "import sys, vidlstm.cli, vidlstm.tools.batch.cli, vidlstm.tools.batch.runner\n"
        "print('ray' in sys.modules)",
    )
    assert out.strip() == "False"


def test_ray_without_the_ray_extra_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    code = WITHOUT_SERVER_EXTRA.format(blocked={"ray"})
    args = ["encode-video", "clip.mp4", "--out", "out", "--ray"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "--ray needs Ray: pip install 'vidlstm[ray]'" in result.stderr
    assert not (tmp_path / "out").exists()
