"""Triton's own load generator, perf_analyzer (C++, from the tritonclient 2.51.0 wheel), drives a real
`vidlstm serve` through sequences, unary and streaming, and must report no errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServeProcess

PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"


def _cuda_runtime_dir() -> Path | None:
    """libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel: perf_analyzer links it, needs no GPU."""
    try:
        import nvidia.cuda_runtime  # type: ignore[import-untyped]
    except ImportError:
        return None
    lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    return lib if (lib / "libcudart.so.12").exists() else None


@pytest.fixture(scope="module")
def perf_analyzer_env() -> dict[str, str]:
    """The environment perf_analyzer runs in; skipped (failed under CI) when it cannot run here."""
    lib = _cuda_runtime_dir()
    problem = None
    if not PERF_ANALYZER.exists():
        problem = f"{PERF_ANALYZER} missing: make install puts it there (tritonclient 2.51.0)"
    elif lib is None:
        problem = "libcudart.so.12 missing: pip install nvidia-cuda-runtime-cu12"
    else:
        env = {**os.environ, "LD_LIBRARY_PATH": str(lib)}
        linked = subprocess.run(["ldd", str(PERF_ANALYZER)], capture_output=True, text=True, env=env).stdout
        if "not found" in linked:
            problem = "perf_analyzer libraries missing (apt-get install libb64-0d):\n" + linked
    if problem is None:
        return env
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.fixture(scope="module")
def open_server() -> Iterator[ServeProcess]:
    server = ServeProcess(token="")
    yield server
    server.stop()
    server.close()


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streaming"])
def test_perf_analyzer_runs_sequences_without_errors(
    open_server: ServeProcess, perf_analyzer_env: dict[str, str], streaming: bool
) -> None:
    command = [
        str(PERF_ANALYZER),
        *("-m", "vidlstm", "-u", open_server.address, "-i", "grpc"),
        *("--sequence-length", "10", "--concurrency-range", "1:8:7", "--measurement-interval", "1000"),
        # Any throughput counts as stable: this checks that it runs, bench_kserve.py measures.
        *("--stability-percentage", "100", "--max-trials", "10"),
        *(["--streaming"] if streaming else []),
    ]
    run = subprocess.run(command, capture_output=True, text=True, env=perf_analyzer_env, timeout=240)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert not re.search(r"error|failed", output, re.IGNORECASE), output
    assert re.findall(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec", output)[-2:] != [], output
    counts = [int(n) for n in re.findall(r"Sequence count: (\d+)", output)]
    assert len(counts) == 2, output
    assert min(counts) > 0, output
