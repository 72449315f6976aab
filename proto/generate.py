"""Regenerate the checked-in stubs (`vidlstm/v1/*_pb2*.py[i]`, `vidlstm/kserve/*_pb2.py[i]`) from `proto/`.

Run through `make proto`. `tests/test_packaging.py` calls `generate()` into a temporary folder
and fails when the checked-in stubs differ, so a `.proto` edit never ships with stale stubs.
The vendored KServe v2 protos get message classes only: the server registers that service's
handlers itself, under Triton's wire name (see service/kserve/).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files(package: str) -> list[Path]:
    return sorted(PROTO_ROOT.glob(f"vidlstm/{package}/*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every `.proto` into `out_dir` (mirroring `vidlstm/v1/...`); returns the files."""
    from grpc_tools import protoc  # dev-only dependency

    plugin = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise SystemExit("protoc-gen-mypy_grpc not found next to python: pip install mypy-protobuf")
    include = Path(protoc.__file__).parent / "_proto"
    messages = [f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
    services = [
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
    ]
    for package, options in (("v1", messages + services), ("kserve", messages)):
        sources = [str(p.relative_to(PROTO_ROOT)) for p in proto_files(package)]
        if protoc.main(["grpc_tools.protoc", *options, *sources]) != 0:
            raise SystemExit("protoc failed, see the messages above")
    return sorted(p for p in (out_dir / "vidlstm").rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="folder to write vidlstm/v1 into")
    for path in generate(parser.parse_args().out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
